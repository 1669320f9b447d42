package dir

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// hashBuffers holds the spare read buffers of md5Of. A cold listing of a
// folder hashes every file in it; a fresh 32 KiB buffer each (io.Copy's)
// made a 100,000-file listing allocate 3 GiB, and the GC, not the disk,
// set its pace. A channel rather than a sync.Pool: it keeps its buffers
// across GCs (and under the race detector, which makes a Pool drop some).
var hashBuffers = make(chan []byte, 8)

const (
	etagXattr = "user.nimbus.etag"
	metaXattr = "user.nimbus.meta"
	// stampVersion starts the etag xattr, so that its format can change.
	stampVersion = "v1"
	// hashAttempts bounds the re-hashing of a file that keeps changing
	// while it is hashed.
	hashAttempts = 3
)

// stamp is the etag xattr's value: the ETag and the size and mtime it was
// computed for.
func stamp(etag string, fi fs.FileInfo) string {
	return fmt.Sprintf("%s %s %d %d", stampVersion, etag, fi.Size(), fi.ModTime().UnixNano())
}

// freshETag returns the ETag in a stamp if the stamp matches fi.
func freshETag(value []byte, fi fs.FileInfo) (string, bool) {
	f := strings.Fields(string(value))
	if len(f) != 4 || f[0] != stampVersion {
		return "", false
	}
	size, err1 := strconv.ParseInt(f[2], 10, 64)
	mtime, err2 := strconv.ParseInt(f[3], 10, 64)
	if err1 != nil || err2 != nil || size != fi.Size() || mtime != fi.ModTime().UnixNano() {
		return "", false
	}
	return f[1], true
}

// etagAt returns the ETag of the regular file at path, whose lstat is fi,
// reading the cached value without opening the file when it is fresh. It
// returns an error satisfying isAbsent when the file vanished.
func (s *Store) etagAt(path string, fi fs.FileInfo) (string, error) {
	if s.xattrs {
		value, err := getxattr(func(buf []byte) (int, error) { return unix.Lgetxattr(path, etagXattr, buf) })
		if err == nil {
			if etag, ok := freshETag(value, fi); ok {
				return etag, nil
			}
		}
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	defer closeQuietly(f)
	fi, err = f.Stat()
	if err != nil {
		return "", err
	}
	return s.etagOf(f, fi)
}

// etagOf returns the ETag of the open regular file f, whose fstat is fi:
// the cached value when fresh, else the MD5 of the content, which it then
// caches. A file that changes while being hashed is hashed again.
func (s *Store) etagOf(f *os.File, fi fs.FileInfo) (string, error) {
	fd := int(f.Fd())
	if s.xattrs {
		value, err := getxattr(func(buf []byte) (int, error) { return unix.Fgetxattr(fd, etagXattr, buf) })
		if err == nil {
			if etag, ok := freshETag(value, fi); ok {
				return etag, nil
			}
		}
	}
	for attempt := 1; ; attempt++ {
		etag, err := md5Of(f, fi.Size())
		if err != nil {
			return "", err
		}
		after, err := f.Stat()
		if err != nil {
			return "", err
		}
		if after.Size() == fi.Size() && after.ModTime().Equal(fi.ModTime()) {
			s.cacheETag(f, etag, fi)
			return etag, nil
		}
		if attempt == hashAttempts {
			// Someone keeps writing the file in place; any answer is
			// a snapshot, so give this one without caching it.
			return etag, nil
		}
		fi = after
	}
}

// md5Of returns the hex MD5 of f's first size bytes.
func md5Of(f *os.File, size int64) (string, error) {
	h := md5.New()
	if size > 0 {
		var buf []byte
		select {
		case buf = <-hashBuffers:
		default:
			buf = make([]byte, 64<<10)
		}
		defer func() {
			select {
			case hashBuffers <- buf:
			default: // enough spares
			}
		}()
		if _, err := io.CopyBuffer(h, io.NewSectionReader(f, 0, size), buf); err != nil {
			return "", fmt.Errorf("hash %s: %w", f.Name(), err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// cacheETag stores the etag stamp on f. Failure only costs a later re-hash
// (read-only files, full xattr space), so it is logged, not returned.
func (s *Store) cacheETag(f *os.File, etag string, fi fs.FileInfo) {
	if !s.xattrs {
		return
	}
	if err := unix.Fsetxattr(int(f.Fd()), etagXattr, []byte(stamp(etag, fi)), 0); err != nil {
		slog.Debug("dir: cannot cache etag", "file", f.Name(), "err", err)
	}
}

// getxattr reads an xattr of any size through get, which has the
// signature of unix.Getxattr with the name and path bound.
func getxattr(get func(buf []byte) (int, error)) ([]byte, error) {
	buf := make([]byte, 128)
	for {
		n, err := get(buf)
		if errors.Is(err, unix.ERANGE) {
			size, err := get(nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, size+64)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// encodeMeta validates user metadata and encodes it, with lower-case names
// as S3 stores them. Empty metadata encodes to nil.
func encodeMeta(meta map[string]string) ([]byte, error) {
	if len(meta) == 0 {
		return nil, nil
	}
	lower := make(map[string]string, len(meta))
	total := 0
	for k, v := range meta {
		if k == "" {
			return nil, errors.New("metadata with an empty name")
		}
		total += len(k) + len(v)
		lower[strings.ToLower(k)] = v
	}
	if total > maxMetaLen {
		return nil, fmt.Errorf("metadata is %d bytes, more than %d", total, maxMetaLen)
	}
	return json.Marshal(lower)
}

func decodeMeta(b []byte) (map[string]string, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var meta map[string]string
	if err := json.Unmarshal(b, &meta); err != nil {
		return nil, fmt.Errorf("decode metadata: %w", err)
	}
	if len(meta) == 0 {
		return nil, nil
	}
	return meta, nil
}

// readMeta returns the user metadata of the open file or directory f at
// path.
func (s *Store) readMeta(f *os.File, path string) (map[string]string, error) {
	var b []byte
	var err error
	if s.xattrs {
		fd := int(f.Fd())
		b, err = getxattr(func(buf []byte) (int, error) { return unix.Fgetxattr(fd, metaXattr, buf) })
		if errors.Is(err, unix.ENODATA) {
			return nil, nil
		}
	} else {
		b, err = os.ReadFile(sidecarPath(path))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("read metadata of %s: %w", path, err)
	}
	return decodeMeta(b)
}

// setMetaXattr stores encoded metadata on the open file f (xattr mode).
func setMetaXattr(f *os.File, encoded []byte) error {
	if len(encoded) == 0 {
		return nil
	}
	if err := unix.Fsetxattr(int(f.Fd()), metaXattr, encoded, 0); err != nil {
		return fmt.Errorf("store metadata on %s: %w", f.Name(), err)
	}
	return nil
}

// sidecarPath is where the metadata of path lives without xattrs. The name
// is hashed so that it stays short and never clashes with a real name.
func sidecarPath(path string) string {
	sum := sha256.Sum256([]byte(filepath.Base(path)))
	return filepath.Join(filepath.Dir(path), sidecarPrefix+hex.EncodeToString(sum[:16]))
}

// writeSidecar replaces (or, for empty metadata, removes) the sidecar of
// path, atomically. Callers hold the store lock.
func writeSidecar(path string, encoded []byte) error {
	side := sidecarPath(path)
	if len(encoded) == 0 {
		if err := os.Remove(side); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove metadata of %s: %w", path, err)
		}
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), tmpPattern)
	if err != nil {
		return fmt.Errorf("store metadata of %s: %w", path, err)
	}
	_, werr := tmp.Write(encoded)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		removeQuietly(tmp.Name())
		return fmt.Errorf("store metadata of %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), side); err != nil {
		removeQuietly(tmp.Name())
		return fmt.Errorf("store metadata of %s: %w", path, err)
	}
	return nil
}

// closeQuietly closes a file opened only for reading; a close error there
// cannot lose data.
func closeQuietly(f *os.File) {
	_ = f.Close() // read-only: nothing to flush
}

// removeQuietly removes a temp file on an error path; the original error is
// the one to report, and a leftover ".nimbus-tmp-*" is hidden anyway.
func removeQuietly(path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		slog.Warn("dir: cannot remove temp file", "path", path, "err", err)
	}
}
