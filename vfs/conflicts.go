package vfs

import "time"

// Key returns the store key of the file at rel, a path relative to the
// mount's root.
func (f *FS) Key(rel string) string { return f.fileKey(rel) }

// CopyGone reports whether the file at store key is known to be gone from
// its name since the time given: deleted or renamed away here (a
// tombstone), or absent from a listing of its folder made after that time
// (deleted or moved elsewhere). A folder not listed since proves nothing.
// It asks the tree only: no request is sent.
func (f *FS) CopyGone(key string, since time.Time) bool {
	rel, ok := f.relPath(key)
	if !ok {
		return false
	}
	dir, name := splitPath(rel)
	e, found, err := f.cfg.Tree.Get(dir, name)
	switch {
	case err != nil:
		return false
	case found:
		return e.Gone
	}
	st, known, err := f.cfg.Tree.Dir(dir)
	return err == nil && known && st.ListedAt.After(since)
}
