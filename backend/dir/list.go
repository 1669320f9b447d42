package dir

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/nimbus-fs/nimbus/backend"
)

// List implements backend.Backend. Files are Objects (files this process
// cannot read are skipped, with a warning), directories are Prefixes, and when prefix names a directory its marker ("a/") is the
// first Object. Entries come in S3 order (by key bytes, "a-b" < "a/" <
// "a0"), at most 1000 per page; an empty result is one empty page. prefix
// may also end inside a name ("a/fo" lists "a/foo", "a/fox/"). A missing
// root gives ErrNoBucket.
func (s *Store) List(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	return s.list(ctx, "list", prefix, false, fn)
}

// ListFlat implements backend.Backend: every file and directory marker
// under prefix, at any depth, in S3 order, at most 1000 per page. It walks
// the tree depth-first, holding one directory's entries at a time.
func (s *Store) ListFlat(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	return s.list(ctx, "list-flat", prefix, true, fn)
}

func (s *Store) list(ctx context.Context, op, prefix string, flat bool, fn func(backend.Page) error) error {
	if err := ctx.Err(); err != nil {
		return s.opError(op, prefix, nil, err)
	}
	if _, err := os.Stat(s.root); err != nil {
		return s.opError(op, prefix, backend.ErrNoBucket, err)
	}
	p := &pager{ctx: ctx, fn: fn}
	cut := strings.LastIndex(prefix, "/") + 1
	dirKey, namePrefix := prefix[:cut], prefix[cut:]
	if dirKey == "" || checkKey(dirKey) == nil {
		if err := s.walk(p, dirKey, namePrefix, flat); err != nil {
			if p.fnErr != nil {
				return err // fn's own error, unwrapped
			}
			return s.listError(op, prefix, err)
		}
	}
	// Else no key can start with prefix: an empty listing, like S3's.
	return p.finish()
}

func (s *Store) listError(op, prefix string, err error) error {
	if kind := osKind(err); kind != nil {
		return s.opError(op, prefix, kind, err)
	}
	return s.opError(op, prefix, nil, err)
}

// walk adds the entries of directory dirKey whose names start with
// namePrefix to p: the marker of dirKey itself first when namePrefix is
// empty, then files and subdirectories (recursively when flat).
func (s *Store) walk(p *pager, dirKey, namePrefix string, flat bool) error {
	dirPath := filepath.Join(s.root, filepath.FromSlash(dirKey))
	if dirKey != "" && namePrefix == "" {
		fi, err := os.Lstat(dirPath)
		if err != nil || !fi.IsDir() {
			// Nothing under this prefix (or it runs through a file).
			return nil
		}
		if ok, err := s.isMarker(dirPath); err != nil && !isAbsent(err) {
			return err
		} else if ok {
			if err := p.addObject(markerInfo(dirKey, fi)); err != nil {
				return err
			}
		}
	}
	entries, err := s.readDir(dirPath, dirKey, namePrefix)
	if err != nil {
		if isAbsent(err) {
			return nil
		}
		return err
	}
	for _, e := range entries {
		if err := p.ctx.Err(); err != nil {
			return err
		}
		switch {
		case e.isDir && flat:
			// walk adds the marker, then the subtree.
			if err := s.walk(p, e.key, "", true); err != nil {
				return err
			}
		case e.isDir:
			if err := p.addPrefix(e.key); err != nil {
				return err
			}
		default:
			etag, err := s.etagAt(e.path, e.info)
			if isAbsent(err) {
				continue // removed since readDir
			}
			if errors.Is(err, fs.ErrPermission) {
				// One unreadable file must not hide its whole
				// directory; it cannot be served anyway.
				slog.Warn("dir: skipping an unreadable file", "path", e.path, "err", err)
				continue
			}
			if err != nil {
				return err
			}
			if err := p.addObject(backend.ObjectInfo{
				Key: e.key, Size: e.info.Size(), ETag: etag, ModTime: e.info.ModTime(),
			}); err != nil {
				return err
			}
		}
	}
	return nil
}

// entry is one listable name of a directory.
type entry struct {
	key   string // "dir/name" for files, "dir/name/" for directories
	path  string
	isDir bool
	info  fs.FileInfo // lstat
}

// readDir returns the listable entries of dirPath whose names start with
// namePrefix, sorted by key. Sorting directories by "name/" gives the S3
// order of the whole tree: every key under "name/" sorts between the
// siblings that sort before and after "name/".
func (s *Store) readDir(dirPath, dirKey, namePrefix string) ([]entry, error) {
	des, err := os.ReadDir(dirPath)
	if err != nil {
		return nil, err
	}
	entries := make([]entry, 0, len(des))
	for _, de := range des {
		name := de.Name()
		if isInternal(name) || !strings.HasPrefix(name, namePrefix) {
			continue
		}
		if !utf8.ValidString(name) {
			slog.Debug("dir: skipping a name that is not UTF-8", "dir", dirPath, "name", name)
			continue
		}
		t := de.Type()
		if !t.IsDir() && !t.IsRegular() {
			continue // symlinks, sockets, devices
		}
		info, err := de.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since ReadDir
		}
		if err != nil {
			return nil, err
		}
		e := entry{key: dirKey + name, path: filepath.Join(dirPath, name), isDir: t.IsDir(), info: info}
		if e.isDir {
			e.key += "/"
		}
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.key, b.key) })
	return entries, nil
}

func markerInfo(key string, fi fs.FileInfo) backend.ObjectInfo {
	return backend.ObjectInfo{Key: key, Size: 0, ETag: emptyETag, ModTime: fi.ModTime()}
}

// pager cuts entries into pages of at most pageSize and hands them to fn.
type pager struct {
	ctx       context.Context
	fn        func(backend.Page) error
	page      backend.Page
	n         int   // entries in page
	delivered bool  // fn was called at least once
	fnErr     error // the error fn returned, to pass it through unwrapped
}

func (p *pager) addObject(o backend.ObjectInfo) error {
	p.page.Objects = append(p.page.Objects, o)
	return p.added()
}

func (p *pager) addPrefix(prefix string) error {
	p.page.Prefixes = append(p.page.Prefixes, prefix)
	return p.added()
}

func (p *pager) added() error {
	p.n++
	if p.n < pageSize {
		return nil
	}
	return p.flush()
}

func (p *pager) flush() error {
	page := p.page
	p.page, p.n, p.delivered = backend.Page{}, 0, true
	if err := p.fn(page); err != nil {
		p.fnErr = err
		return err
	}
	return nil
}

// finish delivers the last partial page, or one empty page if there was
// nothing at all.
func (p *pager) finish() error {
	if p.n == 0 && p.delivered {
		return nil
	}
	if err := p.flush(); err != nil {
		return err // fn's own error, as the contract says
	}
	return nil
}
