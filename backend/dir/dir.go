// Package dir is a Backend over a local folder: the zero-setup remote for
// trying nimbus and for fast tests, with the same conditional semantics as
// S3.
//
// # Keys and files
//
// Key "a/b.txt" is the file ROOT/a/b.txt. A directory marker key "a/" is the
// directory ROOT/a when it was Put (it holds markerName) or holds no key at
// all, so an empty directory persists; then List("a/") includes the object
// "a/" itself, and ListFlat includes "a/" before the keys under it. A
// directory that only holds keys is a prefix, as in S3: no object, so a
// conditional Put of its marker creates it. Deleting the last file of a
// directory with no marker removes the directory, as S3 drops the prefix. Keys that a file system cannot hold (empty, "." or ".."
// segments, a leading "/", segments over 255 bytes, keys over 1024 bytes,
// invalid UTF-8, a path that would be both a file and a directory) fail with
// backend.ErrInvalidKey. Names starting with ".nimbus-" are this package's
// own files (lock, temp files, sidecars): they are never listed and are
// refused as keys. Symbolic links and special files are not listed, and a
// key naming one is not found.
//
// # ETags and metadata
//
// The ETag is the hex MD5 of the content, as S3 computes it for single-part
// uploads; a directory's is the MD5 of nothing. Hashing on every listing
// would be slow, so the ETag is cached in the xattr user.nimbus.etag
// together with the size and mtime it was computed for; a file changed by
// someone else gets a different mtime and is hashed again. User metadata is
// JSON in the xattr user.nimbus.meta. On a file system without user xattrs
// the ETag is recomputed each time and metadata lives in a hidden sidecar
// file next to the object (written just after the object, so a crash in
// between can leave the old metadata).
//
// # Atomicity
//
// Put stages the content in a ".nimbus-tmp-*" file in the target's
// directory, fsyncs it, then renames it into place (and fsyncs the
// directory), so readers see the old or the new file, never a mix. The
// condition check and the rename of Put, Copy and Delete happen while
// holding both an in-process mutex and an exclusive flock on
// ROOT/.nimbus-lock, which makes compare-and-swap atomic across goroutines
// and across processes sharing the folder. Readers take no lock: an open
// file keeps its content when a writer renames a new one over it.
//
// LOCK ORDERING: Store.mu, then the flock. No network I/O happens here, so
// holding them across local file I/O is acceptable.
package dir

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/nimbus-fs/nimbus/backend"
)

const (
	// reservedPrefix starts the names of this package's own files.
	reservedPrefix = ".nimbus-"
	lockName       = reservedPrefix + "lock"
	// markerName is the file that makes a folder an explicit directory
	// marker ("a/" was Put): such a folder stays when its last file goes,
	// as a marker key does in S3, while a folder that only held keys is
	// removed with its last key.
	markerName    = reservedPrefix + "marker"
	tmpPattern    = reservedPrefix + "tmp-*"
	sidecarPrefix = reservedPrefix + "meta-"

	maxKeyLen  = 1024 // S3's limit, in bytes
	maxNameLen = 255  // the usual NAME_MAX
	maxMetaLen = 2048 // S3's limit on user metadata, in bytes
	pageSize   = 1000
)

// emptyETag is the ETag of no content, and of every directory marker.
var emptyETag = func() string {
	sum := md5.Sum(nil)
	return hex.EncodeToString(sum[:])
}()

// Store is a Backend over the folder root. It is safe for concurrent use,
// and several Stores (in one or several processes) may share a root.
type Store struct {
	root   string
	xattrs bool // the file system keeps user xattrs; else sidecars

	mu       sync.Mutex // serialises writers in this process
	lockFile *os.File   // GUARDED_BY(mu); ROOT/.nimbus-lock, opened on first write

	stagingMu sync.Mutex
	staging   map[string]int // GUARDED_BY(stagingMu); folder → Puts staging into it
}

var _ backend.Backend = (*Store)(nil)

// New opens the folder root as a store. It fails with backend.ErrNoBucket
// when root does not exist or is not a directory, and with
// backend.ErrAccess when it cannot be read.
func New(root string) (*Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("dir:%s: %w", root, err)
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("folder %q not found: %w", abs, backend.ErrNoBucket)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("folder %q: %w: %w", abs, backend.ErrAccess, err)
	case err != nil:
		return nil, fmt.Errorf("folder %q: %w", abs, err)
	case !fi.IsDir():
		return nil, fmt.Errorf("%q is not a folder: %w", abs, backend.ErrNoBucket)
	}
	return &Store{root: abs, xattrs: supportsXattrs(abs)}, nil
}

// supportsXattrs probes without writing: reading an absent user xattr gives
// ENODATA where user xattrs work and ENOTSUP where they do not.
func supportsXattrs(path string) bool {
	_, err := unix.Lgetxattr(path, "user.nimbus.probe", nil)
	return !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EOPNOTSUPP)
}

// String returns "dir:" and the absolute root.
func (s *Store) String() string { return "dir:" + s.root }

// object is a key resolved to a path.
type object struct {
	key    string
	marker bool   // key ends in "/": a directory
	path   string // absolute, without trailing slash
}

// resolve checks key and maps it to its path.
func (s *Store) resolve(op, key string) (object, error) {
	if err := checkKey(key); err != nil {
		return object{}, fmt.Errorf("%s %q in %s: %w", op, truncate(key), s, err)
	}
	rel := strings.TrimSuffix(key, "/")
	return object{
		key:    key,
		marker: rel != key,
		path:   filepath.Join(s.root, filepath.FromSlash(rel)),
	}, nil
}

// checkKey returns an error wrapping backend.ErrInvalidKey when key cannot
// name a file or directory under the root.
func checkKey(key string) error {
	switch {
	case key == "" || key == "/":
		return fmt.Errorf("empty key: %w", backend.ErrInvalidKey)
	case len(key) > maxKeyLen:
		return fmt.Errorf("key is %d bytes, more than %d: %w", len(key), maxKeyLen, backend.ErrInvalidKey)
	case !utf8.ValidString(key):
		return fmt.Errorf("key is not valid UTF-8: %w", backend.ErrInvalidKey)
	case strings.HasPrefix(key, "/"):
		return fmt.Errorf("key starts with \"/\": %w", backend.ErrInvalidKey)
	case strings.ContainsRune(key, 0):
		return fmt.Errorf("key contains a NUL byte: %w", backend.ErrInvalidKey)
	}
	for _, seg := range strings.Split(strings.TrimSuffix(key, "/"), "/") {
		if err := checkName(seg); err != nil {
			return err
		}
	}
	return nil
}

func checkName(seg string) error {
	switch {
	case seg == "":
		return fmt.Errorf("key has an empty segment: %w", backend.ErrInvalidKey)
	case seg == "." || seg == "..":
		return fmt.Errorf("key has a %q segment: %w", seg, backend.ErrInvalidKey)
	case len(seg) > maxNameLen:
		return fmt.Errorf("key segment is %d bytes, more than %d: %w", len(seg), maxNameLen, backend.ErrInvalidKey)
	case isInternal(seg):
		return fmt.Errorf("%q is a name this store uses for itself: %w", seg, backend.ErrInvalidKey)
	}
	return nil
}

// isMarker reports whether the directory at path is a marker object: one
// that was Put ("a/", holding markerName), or one that holds nothing but
// this package's own files, which S3 would not have unless its marker
// existed. A directory that only holds keys is a prefix, as in S3, and not
// an object: listings, Stat and conditions do not see it. Nor is one that
// a Put in this process is staging into: it made the folder for its key,
// and S3 shows nothing there until that key lands.
func (s *Store) isMarker(path string) (bool, error) {
	if _, err := os.Lstat(filepath.Join(path, markerName)); err == nil {
		return true, nil
	} else if !isAbsent(err) {
		return false, err
	}
	if s.isStaging(path) {
		return false, nil
	}
	d, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer closeQuietly(d)
	for {
		names, err := d.Readdirnames(64)
		for _, n := range names {
			if !isInternal(n) {
				return false, nil
			}
		}
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
}

// stageInto marks dir and the folders above it, which the Put may create
// one by one, as folders a Put is staging into, until the returned
// function is called.
func (s *Store) stageInto(dir string) (done func()) {
	var dirs []string
	for d := dir; d != s.root && strings.HasPrefix(d, s.root+string(filepath.Separator)); d = filepath.Dir(d) {
		dirs = append(dirs, d)
	}
	s.stagingMu.Lock()
	defer s.stagingMu.Unlock()
	if s.staging == nil {
		s.staging = make(map[string]int)
	}
	for _, d := range dirs {
		s.staging[d]++
	}
	return func() {
		s.stagingMu.Lock()
		defer s.stagingMu.Unlock()
		for _, d := range dirs {
			if s.staging[d]--; s.staging[d] == 0 {
				delete(s.staging, d)
			}
		}
	}
}

func (s *Store) isStaging(dir string) bool {
	s.stagingMu.Lock()
	defer s.stagingMu.Unlock()
	return s.staging[dir] > 0
}

// isInternal reports whether name is one of this package's own files.
// Other names starting with reservedPrefix are ordinary keys: the vfs keeps
// its own hidden objects (".nimbus-attrs") in the store like any other.
func isInternal(name string) bool {
	return name == lockName || name == markerName ||
		strings.HasPrefix(name, reservedPrefix+"tmp-") || strings.HasPrefix(name, sidecarPrefix)
}

// truncate shortens very long keys for messages.
func truncate(key string) string {
	if len(key) <= 80 {
		return key
	}
	return key[:80] + "…"
}

// opError wraps err from op on key with the domain error kind (either may
// be nil, not both).
func (s *Store) opError(op, key string, kind, err error) error {
	switch {
	case err == nil:
		return fmt.Errorf("%s %q in %s: %w", op, truncate(key), s, kind)
	case kind == nil:
		return fmt.Errorf("%s %q in %s: %w", op, truncate(key), s, err)
	default:
		return fmt.Errorf("%s %q in %s: %w: %w", op, truncate(key), s, kind, err)
	}
}

// osKind maps a file system error to the domain error it means, or nil.
// ENOENT and ENOTDIR are left to the caller: whether they mean "not found"
// or "invalid key" depends on the operation.
func osKind(err error) error {
	switch {
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS):
		return backend.ErrAccess
	case errors.Is(err, syscall.ENAMETOOLONG):
		return backend.ErrInvalidKey
	}
	return nil
}

// isAbsent reports whether err means that the path does not exist (or runs
// through a file, which S3 would call absent too).
func isAbsent(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENOTDIR)
}

// absentError is the error for an absent key: ErrNoBucket when the root
// itself is gone (an unplugged disk must not look like an empty remote),
// else ErrNotFound.
func (s *Store) absentError(op, key string, err error) error {
	if _, rootErr := os.Stat(s.root); rootErr != nil {
		return s.opError(op, key, backend.ErrNoBucket, rootErr)
	}
	return s.opError(op, key, backend.ErrNotFound, err)
}

// lock takes the in-process mutex and the flock on ROOT/.nimbus-lock, and
// returns the function that releases both. It waits for another process's
// flock by polling, so that ctx can cancel the wait.
func (s *Store) lock(ctx context.Context) (unlock func(), err error) {
	s.mu.Lock()
	if s.lockFile == nil {
		f, err := os.OpenFile(filepath.Join(s.root, lockName), os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o644)
		if err != nil {
			s.mu.Unlock()
			return nil, fmt.Errorf("lock %s: %w", s, err)
		}
		s.lockFile = f
	}
	fd := int(s.lockFile.Fd())
	for delay := time.Millisecond; ; delay = min(2*delay, 20*time.Millisecond) {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			s.mu.Unlock()
			return nil, fmt.Errorf("lock %s: %w", s, err)
		}
		select {
		case <-ctx.Done():
			s.mu.Unlock()
			return nil, fmt.Errorf("lock %s: %w", s, ctx.Err())
		case <-time.After(delay):
		}
	}
	return func() {
		if err := unix.Flock(fd, unix.LOCK_UN); err != nil {
			// Cannot happen for a valid descriptor; closing it would
			// release the lock, so do that rather than leave it held.
			slog.Error("dir: unlock failed, closing the lock file", "store", s.String(), "err", err)
			if cerr := s.lockFile.Close(); cerr != nil {
				slog.Error("dir: close lock file", "store", s.String(), "err", cerr)
			}
			s.lockFile = nil
		}
		s.mu.Unlock()
	}, nil
}

// syncDir fsyncs a directory so that a rename or removal in it is durable.
func syncDir(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	serr := d.Sync()
	cerr := d.Close()
	return errors.Join(serr, cerr)
}
