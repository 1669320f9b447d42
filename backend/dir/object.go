package dir

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nimbus-fs/nimbus/backend"
)

// stageAttempts bounds the retries of staging into a directory that a
// concurrent Delete of its marker removed meanwhile.
const stageAttempts = 3

// Stat implements backend.Backend. For a file it reads the cached ETag
// (hashing if stale) and the metadata; a marker "a/" exists when the
// directory does. ErrNotFound when absent (also for "a" when "a" is a
// directory, like S3); ErrNoBucket when the root is gone.
func (s *Store) Stat(ctx context.Context, key string) (backend.ObjectInfo, error) {
	obj, err := s.resolve("stat", key)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return backend.ObjectInfo{}, s.opError("stat", key, nil, err)
	}
	f, fi, err := s.open("stat", obj)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	defer closeQuietly(f)
	info, err := s.info(obj, f, fi)
	if err != nil {
		return backend.ObjectInfo{}, s.opError("stat", key, osKind(err), err)
	}
	info.Meta, err = s.readMeta(f, obj.path)
	if err != nil {
		return backend.ObjectInfo{}, s.opError("stat", key, osKind(err), err)
	}
	return info, nil
}

// open opens obj for reading and checks that it is what its key says: a
// directory for a marker, a regular file otherwise. Anything else is
// ErrNotFound.
func (s *Store) open(op string, obj object) (*os.File, fs.FileInfo, error) {
	f, err := os.OpenFile(obj.path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		if isAbsent(err) || errors.Is(err, syscall.ELOOP) {
			return nil, nil, s.absentError(op, obj.key, err)
		}
		return nil, nil, s.opError(op, obj.key, osKind(err), err)
	}
	fi, err := f.Stat()
	if err != nil {
		closeQuietly(f)
		return nil, nil, s.opError(op, obj.key, osKind(err), err)
	}
	if (obj.marker && !fi.IsDir()) || (!obj.marker && !fi.Mode().IsRegular()) {
		closeQuietly(f)
		return nil, nil, s.opError(op, obj.key, backend.ErrNotFound, nil)
	}
	if obj.marker {
		if ok, err := s.isMarker(obj.path); err != nil || !ok {
			closeQuietly(f)
			if err != nil {
				return nil, nil, s.opError(op, obj.key, osKind(err), err)
			}
			return nil, nil, s.opError(op, obj.key, backend.ErrNotFound, nil) // a prefix only
		}
	}
	return f, fi, nil
}

// info describes the open object f (without metadata).
func (s *Store) info(obj object, f *os.File, fi fs.FileInfo) (backend.ObjectInfo, error) {
	if obj.marker {
		return markerInfo(obj.key, fi), nil
	}
	etag, err := s.etagOf(f, fi)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	return backend.ObjectInfo{Key: obj.key, Size: fi.Size(), ETag: etag, ModTime: fi.ModTime()}, nil
}

// Get implements backend.Backend. The reader reads the file opened by Get,
// so a concurrent Put (a rename) does not change what it returns. A marker
// reads as empty.
func (s *Store) Get(ctx context.Context, key string, off, n int64, ifMatch string) (io.ReadCloser, error) {
	obj, err := s.resolve("get", key)
	if err != nil {
		return nil, err
	}
	if off < 0 {
		return nil, fmt.Errorf("get %q in %s: negative offset %d", key, s, off)
	}
	if err := ctx.Err(); err != nil {
		return nil, s.opError("get", key, nil, err)
	}
	f, fi, err := s.open("get", obj)
	if err != nil {
		return nil, err
	}
	if ifMatch != "" {
		info, err := s.info(obj, f, fi)
		if err != nil {
			closeQuietly(f)
			return nil, s.opError("get", key, osKind(err), err)
		}
		if info.ETag != ifMatch {
			closeQuietly(f)
			return nil, s.opError("get", key, backend.ErrPrecondition,
				fmt.Errorf("etag is %s, not %s", info.ETag, ifMatch))
		}
	}
	size := fi.Size()
	if obj.marker || off >= size {
		closeQuietly(f)
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	if n < 0 || n > size-off {
		n = size - off
	}
	return &fileRange{SectionReader: io.NewSectionReader(f, off, n), f: f}, nil
}

// fileRange reads part of an open file and closes it.
type fileRange struct {
	*io.SectionReader
	f *os.File
}

func (r *fileRange) Close() error { return r.f.Close() }

// Put implements backend.Backend. The content is staged and fsynced in a
// temp file beside the target before the lock is taken; under the lock Put
// checks cond and renames. A marker key ("a/") needs size 0 and creates the
// directory (and its parents). ErrInvalidKey when the key's path is taken
// by the other kind (a file where a directory is needed, or the reverse).
// Directories Put created for a write that then fails are removed again.
func (s *Store) Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string, cond backend.Cond) (backend.ObjectInfo, error) {
	obj, err := s.resolve("put", key)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	if size < 0 {
		return backend.ObjectInfo{}, fmt.Errorf("put %q in %s: negative size %d", key, s, size)
	}
	return s.put(ctx, "put", obj, body, size, meta, cond)
}

// put is Put after argument checks; Copy shares it. body is only read.
func (s *Store) put(ctx context.Context, op string, obj object, body io.Reader, size int64, meta map[string]string, cond backend.Cond) (backend.ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return backend.ObjectInfo{}, s.opError(op, obj.key, nil, err)
	}
	if cond.IfMatch != "" && cond.IfNoneMatch {
		return backend.ObjectInfo{}, s.opError(op, obj.key, backend.ErrPrecondition,
			errors.New("both If-Match and If-None-Match"))
	}
	encoded, err := encodeMeta(meta)
	if err != nil {
		return backend.ObjectInfo{}, s.opError(op, obj.key, nil, err)
	}
	if obj.marker {
		if size != 0 {
			return backend.ObjectInfo{}, s.opError(op, obj.key, backend.ErrInvalidKey,
				fmt.Errorf("a directory marker holds no content, got %d bytes", size))
		}
		return s.putMarker(ctx, op, obj, encoded, cond)
	}

	defer s.stageInto(filepath.Dir(obj.path))()
	tmp, created, err := s.stage(ctx, op, obj, body, size, encoded)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	committed := false
	unlock, err := s.lock(ctx)
	if err != nil {
		removeQuietly(tmp.path)
		return backend.ObjectInfo{}, s.opError(op, obj.key, osKind(err), err)
	}
	defer func() {
		if !committed {
			removeQuietly(tmp.path)
			s.removeCreated(created)
		}
		unlock()
	}()
	if err := s.checkCond(op, obj, cond); err != nil {
		return backend.ObjectInfo{}, err
	}
	if err := os.Rename(tmp.path, obj.path); err != nil {
		if errors.Is(err, syscall.EISDIR) || errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
			return backend.ObjectInfo{}, s.opError(op, obj.key, backend.ErrInvalidKey,
				fmt.Errorf("%s is a directory", obj.path))
		}
		return backend.ObjectInfo{}, s.opError(op, obj.key, osKind(err), err)
	}
	committed = true
	if err := syncDir(filepath.Dir(obj.path)); err != nil {
		return backend.ObjectInfo{}, s.opError(op, obj.key, osKind(err), err)
	}
	if !s.xattrs {
		if err := writeSidecar(obj.path, encoded); err != nil {
			return backend.ObjectInfo{}, s.opError(op, obj.key, osKind(err), err)
		}
	}
	return tmp.info, nil
}

// staged is content written, fsynced and described, waiting for a rename.
type staged struct {
	path string
	info backend.ObjectInfo
}

// stage writes exactly size bytes of body to a new temp file in obj's
// directory, creating the directories on the way (returned, so that they
// can be removed if the write fails), with the etag stamp and metadata set.
func (s *Store) stage(ctx context.Context, op string, obj object, body io.Reader, size int64, encoded []byte) (staged, []string, error) {
	dir := filepath.Dir(obj.path)
	var created []string
	var tmp *os.File
	for attempt := 1; ; attempt++ {
		more, err := s.mkdirs(dir)
		created = append(created, more...)
		if err != nil {
			s.removeCreatedLocked(ctx, created)
			return staged{}, nil, s.opError(op, obj.key, mkdirKind(err), err)
		}
		if fi, err := os.Lstat(obj.path); err == nil && fi.IsDir() {
			s.removeCreatedLocked(ctx, created)
			return staged{}, nil, s.opError(op, obj.key, backend.ErrInvalidKey,
				fmt.Errorf("%s is a directory", obj.path))
		}
		tmp, err = os.CreateTemp(dir, tmpPattern)
		if err == nil {
			break
		}
		// A concurrent Delete of a marker may have removed dir
		// between mkdirs and CreateTemp; make it again.
		if !errors.Is(err, fs.ErrNotExist) || attempt == stageAttempts {
			s.removeCreatedLocked(ctx, created)
			return staged{}, nil, s.opError(op, obj.key, osKind(err), err)
		}
	}
	fail := func(err error) (staged, []string, error) {
		closeQuietly(tmp)
		removeQuietly(tmp.Name())
		s.removeCreatedLocked(ctx, created)
		if ctx.Err() != nil {
			return staged{}, nil, s.opError(op, obj.key, nil, ctx.Err())
		}
		return staged{}, nil, s.opError(op, obj.key, osKind(err), err)
	}

	h := md5.New()
	written, err := io.Copy(io.MultiWriter(tmp, h), &ctxReader{ctx: ctx, r: io.LimitReader(body, size)})
	if err != nil {
		return fail(err)
	}
	if written != size {
		return fail(fmt.Errorf("body ended after %d of %d bytes", written, size))
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fail(err)
	}
	if s.xattrs {
		if err := setMetaXattr(tmp, encoded); err != nil {
			return fail(err)
		}
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	fi, err := tmp.Stat()
	if err != nil {
		return fail(err)
	}
	etag := hex.EncodeToString(h.Sum(nil))
	s.cacheETag(tmp, etag, fi)
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	return staged{
		path: tmp.Name(),
		info: backend.ObjectInfo{Key: obj.key, Size: size, ETag: etag, ModTime: fi.ModTime()},
	}, created, nil
}

// mkdirs creates dir and its missing parents under the root, fsyncing each
// parent so that the new entries are durable, and returns the directories
// it created, outermost first.
func (s *Store) mkdirs(dir string) ([]string, error) {
	rel, err := filepath.Rel(s.root, dir)
	if err != nil || rel == "." {
		return nil, err
	}
	var created []string
	cur := s.root
	for _, name := range strings.Split(rel, string(filepath.Separator)) {
		next := filepath.Join(cur, name)
		err := os.Mkdir(next, 0o755)
		switch {
		case err == nil:
			created = append(created, next)
			if err := syncDir(cur); err != nil {
				return created, err
			}
		case errors.Is(err, fs.ErrExist):
			fi, err := os.Lstat(next)
			if err != nil {
				return created, err
			}
			if !fi.IsDir() {
				return created, fmt.Errorf("%s: %w", next, syscall.ENOTDIR)
			}
		default:
			return created, err
		}
		cur = next
	}
	return created, nil
}

// mkdirKind maps an error of mkdirs: a file in the way makes the key
// invalid.
func mkdirKind(err error) error {
	if errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.EEXIST) {
		return backend.ErrInvalidKey
	}
	return osKind(err)
}

// removeCreated removes directories a failed write created, innermost
// first, unless something has been put in them meanwhile. Callers hold the
// store lock.
func (s *Store) removeCreated(created []string) {
	for i := len(created) - 1; i >= 0; i-- {
		if err := os.Remove(created[i]); err != nil {
			return // not empty (anymore) or gone: leave it and its parents
		}
	}
}

// removeCreatedLocked is removeCreated for callers without the lock.
func (s *Store) removeCreatedLocked(ctx context.Context, created []string) {
	if len(created) == 0 {
		return
	}
	unlock, err := s.lock(ctx)
	if err != nil {
		return // at worst an empty directory stays, which is harmless
	}
	defer unlock()
	s.removeCreated(created)
}

// checkCond checks cond against the current object. Callers hold the lock.
func (s *Store) checkCond(op string, obj object, cond backend.Cond) error {
	if cond == (backend.Cond{}) {
		return nil
	}
	cur, exists, err := s.current(obj, cond.IfMatch != "")
	if err != nil {
		return s.opError(op, obj.key, osKind(err), err)
	}
	switch {
	case cond.IfNoneMatch && exists:
		return s.opError(op, obj.key, backend.ErrPrecondition, errors.New("the object exists"))
	case cond.IfMatch != "" && !exists:
		return s.opError(op, obj.key, backend.ErrPrecondition, errors.New("the object does not exist"))
	case cond.IfMatch != "" && cur != cond.IfMatch:
		return s.opError(op, obj.key, backend.ErrPrecondition,
			fmt.Errorf("etag is %s, not %s", cur, cond.IfMatch))
	}
	return nil
}

// current reports whether obj exists and, if wantETag, its ETag. A path of
// the other kind (a directory for a file key) does not count as obj.
func (s *Store) current(obj object, wantETag bool) (etag string, exists bool, err error) {
	fi, err := os.Lstat(obj.path)
	if isAbsent(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	switch {
	case obj.marker && fi.IsDir():
		if ok, err := s.isMarker(obj.path); err != nil || !ok {
			return "", false, err // a prefix only
		}
		return emptyETag, true, nil
	case obj.marker || !fi.Mode().IsRegular():
		return "", false, nil
	case !wantETag:
		return "", true, nil
	}
	etag, err = s.etagAt(obj.path, fi)
	if isAbsent(err) {
		return "", false, nil
	}
	return etag, err == nil, err
}

// putMarker creates the directory of a marker key, under the lock.
func (s *Store) putMarker(ctx context.Context, op string, obj object, encoded []byte, cond backend.Cond) (backend.ObjectInfo, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return backend.ObjectInfo{}, s.opError(op, obj.key, osKind(err), err)
	}
	defer unlock()
	if err := s.checkCond(op, obj, cond); err != nil {
		return backend.ObjectInfo{}, err
	}
	if fi, err := os.Lstat(obj.path); err == nil && !fi.IsDir() {
		return backend.ObjectInfo{}, s.opError(op, obj.key, backend.ErrInvalidKey,
			fmt.Errorf("%s is a file", obj.path))
	}
	if _, err := s.mkdirs(obj.path); err != nil {
		return backend.ObjectInfo{}, s.opError(op, obj.key, mkdirKind(err), err)
	}
	mf, err := os.OpenFile(filepath.Join(obj.path, markerName), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return backend.ObjectInfo{}, s.opError(op, obj.key, osKind(err), err)
	}
	closeQuietly(mf)
	if err := syncDir(obj.path); err != nil {
		return backend.ObjectInfo{}, s.opError(op, obj.key, osKind(err), err)
	}
	d, err := os.Open(obj.path)
	if err != nil {
		return backend.ObjectInfo{}, s.opError(op, obj.key, osKind(err), err)
	}
	defer closeQuietly(d)
	if s.xattrs {
		if len(encoded) > 0 {
			err = setMetaXattr(d, encoded)
		} else if rerr := unix.Fremovexattr(int(d.Fd()), metaXattr); rerr != nil && !errors.Is(rerr, unix.ENODATA) {
			err = rerr
		}
	} else {
		err = writeSidecar(obj.path, encoded)
	}
	if err != nil {
		return backend.ObjectInfo{}, s.opError(op, obj.key, osKind(err), err)
	}
	fi, err := d.Stat()
	if err != nil {
		return backend.ObjectInfo{}, s.opError(op, obj.key, osKind(err), err)
	}
	return markerInfo(obj.key, fi), nil
}

// Copy implements backend.Backend: it opens src, checks srcETag, and
// stages a copy of the opened file (so the bytes are those of the checked
// version) with src's metadata; then, under the lock, checks cond on dst
// and renames, like Put. A marker src copies as empty content.
func (s *Store) Copy(ctx context.Context, src, srcETag, dst string, cond backend.Cond) (backend.ObjectInfo, error) {
	srcObj, err := s.resolve("copy", src)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	dstObj, err := s.resolve("copy", dst)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return backend.ObjectInfo{}, s.opError("copy", src, nil, err)
	}
	f, fi, err := s.open("copy", srcObj)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	defer closeQuietly(f)
	info, err := s.info(srcObj, f, fi)
	if err != nil {
		return backend.ObjectInfo{}, s.opError("copy", src, osKind(err), err)
	}
	if srcETag != "" && info.ETag != srcETag {
		return backend.ObjectInfo{}, s.opError("copy", src, backend.ErrPrecondition,
			fmt.Errorf("etag is %s, not %s", info.ETag, srcETag))
	}
	meta, err := s.readMeta(f, srcObj.path)
	if err != nil {
		return backend.ObjectInfo{}, s.opError("copy", src, osKind(err), err)
	}
	var body io.Reader = bytes.NewReader(nil)
	if !srcObj.marker {
		body = io.NewSectionReader(f, 0, info.Size)
	}
	return s.put(ctx, "copy to", dstObj, body, info.Size, meta, cond)
}

// Delete implements backend.Backend, under the lock. Deleting an absent key
// succeeds, with or without ifMatch. A marker's directory is removed only
// when empty: with content under it, Delete succeeds and the directory
// stays (as in S3, where the prefix stays visible while keys remain under
// it).
func (s *Store) Delete(ctx context.Context, key string, ifMatch string) error {
	obj, err := s.resolve("delete", key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return s.opError("delete", key, nil, err)
	}
	unlock, err := s.lock(ctx)
	if err != nil {
		return s.opError("delete", key, osKind(err), err)
	}
	defer unlock()
	cur, exists, err := s.current(obj, ifMatch != "")
	if err != nil {
		return s.opError("delete", key, osKind(err), err)
	}
	if !exists {
		return nil
	}
	if ifMatch != "" && cur != ifMatch {
		return s.opError("delete", key, backend.ErrPrecondition, fmt.Errorf("etag is %s, not %s", cur, ifMatch))
	}
	if obj.marker {
		if err := os.Remove(filepath.Join(obj.path, markerName)); err != nil && !isAbsent(err) {
			return s.opError("delete", key, osKind(err), err)
		}
	}
	if err := os.Remove(obj.path); err != nil {
		if obj.marker && (errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST)) {
			return nil // keys remain under it: the folder stays until they go
		}
		if isAbsent(err) {
			return nil
		}
		return s.opError("delete", key, osKind(err), err)
	}
	if !s.xattrs {
		if err := writeSidecar(obj.path, nil); err != nil {
			return s.opError("delete", key, osKind(err), err)
		}
	}
	if err := s.pruneEmptyParents(filepath.Dir(obj.path)); err != nil {
		return s.opError("delete", key, osKind(err), err)
	}
	return nil
}

// pruneEmptyParents removes dir and the folders above it while they are
// empty and not markers (a marker folder holds its marker file), as S3
// forgets a prefix with its last key. It stops at the root.
func (s *Store) pruneEmptyParents(dir string) error {
	for ; dir != s.root && strings.HasPrefix(dir, s.root+string(filepath.Separator)); dir = filepath.Dir(dir) {
		if err := os.Remove(dir); err != nil {
			if errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) || isAbsent(err) {
				break
			}
			return err
		}
	}
	return syncDir(dir)
}

// ctxReader stops a copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r *ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
