package vfs

import (
	"context"
	"strings"
	"syscall"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// The attribute index.
//
// Listings carry no object metadata, so the attributes of each folder's
// entries also live in a sidecar object per folder (backend/attrindex,
// whose package doc explains the design). The store the vfs lists through
// is that package's decorator: its listings already hold the attributes
// (backend.ObjectInfo.Attrs, backend.Page.PrefixAttrs), which
// listingToEntries applies. The vfs reports what each completed journal op
// changed (recordAttrs) through attrRecorder, Config.Attrs.

// attrRecorder is what the vfs tells the attribute index: the attributes
// of each version it uploaded or copied and of each folder, and what it
// deleted. Keys are full object keys; a folder's ends in "/".
type attrRecorder interface {
	// SetFile records that version etag of the file at key has a.
	SetFile(key, etag string, a backend.Attrs)
	// SetFolder records the attributes of the folder whose marker is key.
	SetFolder(key string, a backend.Attrs)
	// Forget records that the index has nothing to say of key.
	Forget(key string)
	// FolderRemoved records that the folder with prefix was removed here.
	FolderRemoved(prefix string)
	// Recorded returns what the index, as last seen, holds for key in one
	// of the versions etags.
	Recorded(key string, etags ...string) (backend.Attrs, bool)
	// Flush waits until every change is written; its error says what
	// waits and why.
	Flush(ctx context.Context) error
}

// attrsOf is what entry e holds of the attributes an index keeps.
func attrsOf(e cache.Entry) backend.Attrs {
	mode := e.Mode
	if mode != 0 && mode&syscall.S_IFMT == 0 {
		mode |= e.Type()
	}
	return backend.Attrs{Mode: mode, MTime: e.MTime, ATime: e.ATime, CTime: e.CTime,
		Owner: e.Owner, UID: e.UID, GID: e.GID, Rdev: e.Rdev, Target: e.Target}
}

// applyAttrs sets e's attributes from those a listing carried.
func applyAttrs(e *cache.Entry, a backend.Attrs) {
	if !a.MTime.IsZero() {
		e.MTime, e.Attrs = a.MTime, true
	}
	if a.Mode != 0 {
		setMode(e, a.Mode)
	}
	if a.Owner {
		e.Owner, e.UID, e.GID, e.Attrs = true, a.UID, a.GID, true
	}
	if !a.ATime.IsZero() {
		e.ATime, e.Attrs = a.ATime, true
	}
	if !a.CTime.IsZero() {
		e.CTime, e.Attrs = a.CTime, true
	}
	if a.Target != "" && e.Type() == syscall.S_IFLNK {
		e.Target = a.Target
	}
	if a.Rdev != 0 {
		e.Rdev = a.Rdev
	}
}

// recordAttrs tells the attribute index what a completed journal op
// changed in its folder. stored is the entry Applied recorded for an
// uploaded or copied file, zero when it recorded none.
func (f *FS) recordAttrs(r journal.Result, stored cache.Entry) {
	x := f.cfg.Attrs
	if x == nil {
		return
	}
	if r.Conflict != nil && r.Conflict.ConflictKey != "" && r.Info.ETag != "" {
		var e cache.Entry
		attrsFromMeta(r.Op.Meta, &e) // the local version went there
		f.indexFile(r.Conflict.ConflictKey, r.Info.ETag, e)
	}
	if r.Conflict != nil || r.Dropped {
		return // the store's version kept the name; its entry, if any, stays
	}
	switch r.Op.Kind {
	case journal.PutFile:
		e := stored
		if e.Name == "" {
			// A newer change is pending; this version was stored anyway.
			attrsFromMeta(r.Op.Meta, &e)
		}
		f.indexFile(r.Op.Key, r.Info.ETag, e)
	case journal.Copy:
		e := stored
		if !e.Attrs {
			e = f.copiedAttrs(r)
		}
		// Unknown attributes leave the sidecar alone: the copy has its
		// source's metadata, which an entry there may well describe.
		if e.Attrs {
			f.indexFile(r.Op.Key, r.Info.ETag, e)
		}
	case journal.PutMarker:
		rel, ok := f.relPath(strings.TrimSuffix(r.Op.Key, "/"))
		if ok && showable(rel) && stored.Name != "" && stored.Attrs {
			dir, _ := splitPath(rel)
			f.indexFolder(dir, stored)
		}
	case journal.Delete:
		rel, ok := f.relPath(strings.TrimSuffix(r.Op.Key, "/"))
		if !ok || !showable(rel) {
			return // not shown, so not in a sidecar (a sidecar itself, say)
		}
		if strings.HasSuffix(r.Op.Key, "/") {
			f.folderRemoved(r.Op.Key)
			return
		}
		x.Forget(r.Op.Key)
	}
}

// folderRemoved tells the attribute index that the folder whose marker is
// key was removed here: its sidecar goes once nothing shows or waits in
// it, and so does its record in its parent's unless it shows again. Told
// when the removal is journaled (rmdir, a folder rename) and again when
// the marker's Delete completes: the journal cancels the Delete of a
// marker it has not uploaded yet, and then reports nothing, while the
// folder's files may have made its sidecar already.
func (f *FS) folderRemoved(key string) {
	x := f.cfg.Attrs
	rel, ok := f.relPath(strings.TrimSuffix(key, "/"))
	if x == nil || !ok || !showable(rel) {
		return
	}
	x.FolderRemoved(key)
	dir, name := splitPath(rel)
	if _, shown, err := f.cfg.Tree.Lookup(dir, name); err == nil && !shown {
		x.Forget(key) // its record in the parent's
	}
}

// foldersRemoved tells the attribute index of the folders whose marker
// Deletes ops journaled (see folderRemoved). Called once the tree no
// longer shows them.
func (f *FS) foldersRemoved(ops []journal.Op) {
	for _, op := range ops {
		if op.Kind == journal.Delete && strings.HasSuffix(op.Key, "/") {
			f.folderRemoved(op.Key)
		}
	}
}

// indexFolder records the attributes of folder e, in dir, in dir's index.
func (f *FS) indexFolder(dir string, e cache.Entry) {
	if f.cfg.Attrs == nil || !showable(cache.JoinPath(dir, e.Name)) {
		return
	}
	f.cfg.Attrs.SetFolder(f.dirKeyPrefix(dir)+e.Name+"/", attrsOf(e))
}

// indexFile records the attributes e holds for version etag of key, or,
// when it holds none (an upload without them), that the folder's sidecar
// has nothing to say of key.
func (f *FS) indexFile(key, etag string, e cache.Entry) {
	rel, ok := f.relPath(key)
	if !ok || etag == "" || !showable(rel) {
		return
	}
	if !e.Attrs {
		f.cfg.Attrs.Forget(key)
		return
	}
	f.cfg.Attrs.SetFile(key, etag, attrsOf(e))
}

// copiedAttrs finds the attributes of a server-side copy's source in the
// index of its folder, as last seen: a folder rename shows the moved files
// without them.
func (f *FS) copiedAttrs(r journal.Result) cache.Entry {
	if _, ok := f.relPath(r.Op.Src); !ok {
		return cache.Entry{}
	}
	a, ok := f.cfg.Attrs.Recorded(r.Op.Src, r.Op.SrcETag, r.Info.ETag)
	if !ok {
		return cache.Entry{}
	}
	var e cache.Entry
	applyAttrs(&e, a)
	return e
}

// FlushAttrs waits until the attribute index has no change left to write
// (nimbus sync). When ctx ends first, the error names the folders whose
// sidecars wait and why (offline, say).
func (f *FS) FlushAttrs(ctx context.Context) error {
	if f.cfg.Attrs == nil {
		return nil
	}
	return f.cfg.Attrs.Flush(ctx)
}

// Shows reports whether the mount shows the folder whose key prefix is
// given ("a/b/"); the attribute index asks it before hiding a folder
// removed here (attrindex.Config.Shown).
func (f *FS) Shows(prefix string) bool {
	rel, ok := f.relPath(strings.TrimSuffix(prefix, "/"))
	if !ok || rel == "" {
		return true
	}
	dir, name := splitPath(rel)
	_, shown, err := f.cfg.Tree.Lookup(dir, name)
	return shown || err != nil
}

// ShowsNothingUnder reports whether the mount shows nothing in the folder
// whose key prefix is given; the attribute index asks it before deleting
// the sidecar of a folder removed here (attrindex.Config.ShownEmpty).
func (f *FS) ShowsNothingUnder(prefix string) bool {
	rel, ok := f.relPath(prefix)
	if !ok {
		return false
	}
	empty := true
	if err := f.cfg.Tree.Children(strings.TrimSuffix(rel, "/"), func(cache.Entry) bool { empty = false; return false }); err != nil {
		return false // keep the sidecar: the tree cannot tell
	}
	return empty
}
