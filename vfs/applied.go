package vfs

import (
	"path"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"

	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// Applied is the journal's completion report (journal.Config.Applied): it
// turns the Local entry of a finished upload into the store's version, and
// shows conflicted copies. Pass it to journal.Open.
func (f *FS) Applied(r journal.Result) {
	f.adoptUploaded(r) // cached before the node reads the new version (uploaded.go)
	key := r.Op.Key
	rel, ok := f.relPath(key)
	if !ok {
		return
	}
	dir, name := splitPath(strings.TrimSuffix(rel, "/"))
	var notify []string    // paths whose kernel entries changed
	var stored cache.Entry // the entry of an uploaded or copied file

	f.localMu.Lock()
	// Pending still lists the op being reported: only a newer one counts.
	p, pending := f.cfg.Journal.Pending(key)
	stillPending := pending && p.Seq > r.Seq
	switch {
	case stillPending:
		// A newer local change of this key is queued: it stays Local.
	case r.Conflict != nil || r.Dropped:
		// The store's version keeps the name: show it again.
		f.dropLocal(dir, name, strings.HasSuffix(key, "/"))
		notify = append(notify, rel)
	case r.Op.Kind == journal.Delete:
		f.dropTombstone(dir, name)
		f.forgetMoveLocked(key)
	case r.Op.Kind == journal.PutMarker:
		e := cache.Entry{Name: name, Dir: true}
		if old, ok := f.lookupApplied(dir, name); ok && old.Dir {
			e.CopyAttrs(old) // its mtime follows its entries since
		} else {
			attrsFromMeta(r.Op.Meta, &e)
		}
		f.putEntry(dir, e)
		stored = e
	case r.Op.Kind == journal.MoveTree:
		f.treeMoved(r) // rename_dir.go
	default: // PutFile, Copy
		e := cache.Entry{Name: name, Size: r.Info.Size, ETag: r.Info.ETag, MTime: r.Info.ModTime}
		old, known := f.lookupApplied(dir, name)
		if r.Op.Kind == journal.PutFile && r.Op.Meta != nil {
			attrsFromMeta(r.Op.Meta, &e) // what was stored with it
			if known && e.Type() == syscall.S_IFLNK && old.Type() == syscall.S_IFLNK {
				e.Target = old.Target // the body, not in the metadata
			}
		} else if known && !old.MTime.IsZero() {
			// A copy carries its source's metadata, which the entry
			// shown for it has.
			e.CopyAttrs(old)
		}
		f.putEntry(dir, e)
		stored = e
	}
	if r.Conflict != nil && r.Conflict.ConflictKey != "" {
		if crel, ok := f.relPath(r.Conflict.ConflictKey); ok {
			cdir, cname := splitPath(crel)
			f.putEntry(cdir, cache.Entry{Name: cname, Size: r.Info.Size, ETag: r.Info.ETag, MTime: r.Info.ModTime})
			notify = append(notify, crel)
		}
	}
	f.applied[dir]++ // a listing running now may predate this
	if r.Conflict != nil && r.Conflict.ConflictKey != "" {
		if crel, ok := f.relPath(r.Conflict.ConflictKey); ok {
			cdir, _ := splitPath(crel)
			f.applied[cdir]++
		}
	}
	// The live node changes in the same critical section as the tree: a
	// delete or rename reading it cannot see one without the other.
	if !stillPending && r.Op.Kind != journal.Delete && r.Op.Kind != journal.PutMarker && r.Op.Kind != journal.MoveTree {
		f.settle(rel, r, stored)
	}
	f.localMu.Unlock()
	f.recordAttrs(r, stored) // the folder's sidecar of attributes (attrindex.go)

	if r.Conflict != nil {
		f.log.Warn("conflict", "key", r.Conflict.Key, "copy", r.Conflict.ConflictKey, "reason", r.Conflict.Reason)
	}
	// Tell the kernel, asynchronously: never from inside an operation.
	if len(notify) > 0 {
		f.background(func() { f.notifyEntries(notify) })
	}
}

// lookupApplied is the tree's entry of a name whose upload completed. A
// failure to read the tree is logged and taken as no entry: the completed
// version is then shown with the attributes it was stored with, and the
// next listing corrects the rest.
func (f *FS) lookupApplied(dir, name string) (cache.Entry, bool) {
	e, ok, err := f.cfg.Tree.Lookup(dir, name)
	if err != nil {
		f.log.Warn("cannot read the tree for a completed upload", "dir", dir, "name", name, "err", err)
		return cache.Entry{}, false
	}
	return e, ok
}

// dropLocal forgets the local state of dir/name and makes dir list again,
// so that the store's version shows. An entry of the other kind made since
// (a folder where a file was) is a newer local change and stays.
func (f *FS) dropLocal(dir, name string, isDir bool) {
	if e, ok, err := f.cfg.Tree.Get(dir, name); err != nil {
		f.log.Warn("drop local entry", "dir", dir, "name", name, "err", err)
	} else if ok && e.Dir == isDir {
		if err := f.cfg.Tree.RemoveEntry(dir, name); err != nil {
			f.log.Warn("drop local entry", "dir", dir, "name", name, "err", err)
		}
	}
	if err := f.cfg.Tree.MarkStale(dir); err != nil {
		f.log.Warn("mark stale", "dir", dir, "err", err)
	}
}

// dropTombstone removes the tombstone of a confirmed delete. Anything else
// there is a newer local change of the name, and stays.
func (f *FS) dropTombstone(dir, name string) {
	e, ok, err := f.cfg.Tree.Get(dir, name)
	if err == nil && ok && e.Gone {
		err = f.cfg.Tree.RemoveEntry(dir, name)
	}
	if err != nil {
		f.log.Warn("forget deleted entry", "dir", dir, "name", name, "err", err)
	}
}

func (f *FS) putEntry(dir string, e cache.Entry) {
	if err := f.cfg.Tree.PutEntry(dir, e); err != nil {
		f.log.Warn("record uploaded entry", "dir", dir, "name", e.Name, "err", err)
	}
}

// forgetMoveLocked stops waiting for the copy of a file that a folder
// rename moved to key, once a delete of key landed with nothing newer
// pending: the file is gone, and its copy, if it ever ran, was settled by
// nobody (it completed while the delete was pending). Called with
// f.localMu held.
func (f *FS) forgetMoveLocked(key string) {
	if n := f.takeMovedLocked(key); n != nil {
		n.mu.Lock()
		n.movedTo = ""
		n.mu.Unlock()
	}
}

// takeMovedLocked removes key from f.moving and returns its node if that
// is still moving there (not moved again, nor settled since). Called with
// f.localMu held, under which movedTo changes.
func (f *FS) takeMovedLocked(key string) *fileNode {
	n := f.moving[key]
	if n == nil {
		return nil
	}
	delete(f.moving, key)
	n.mu.Lock()
	still := n.movedTo == key
	n.mu.Unlock()
	if !still {
		return nil
	}
	return n
}

// settle lets a live node with no unsaved change read the uploaded version
// from the store from now on, releasing its working copy. Called with
// f.localMu held.
func (f *FS) settle(rel string, r journal.Result, stored cache.Entry) {
	n := f.liveFile(rel)
	moved := f.takeMovedLocked(r.Op.Key)
	if n == nil {
		n = moved // renamed with its folder; the kernel has not moved it yet
	}
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.movedTo = ""
	if r.Conflict == nil && !r.Dropped {
		n.entry.ETag, n.entry.Size, n.entry.Local = r.Info.ETag, r.Info.Size, false
		n.entry.CopyAttrs(stored)
		n.ownETag = r.Info.ETag
		if n.work != nil {
			// The next commit of this working copy edits what was just
			// uploaded. (This runs while the journal still lists the op,
			// so a commit racing with it is chained by the journal.)
			old := n.work.base
			n.work.base = journal.Base{Exists: true, ETag: r.Info.ETag}
			// Its content is that version only if nothing changed since
			// the commit just uploaded.
			if p, ok := f.cfg.Journal.Pending(f.fileKey(rel)); !n.work.dirty && ok && p.Seq == r.Seq {
				n.work.changes = copiedFrom(n.work.size)
			} else {
				n.work.changes = n.work.changes.landed(old, r, n.work.size) // delta.go
			}
		}
	} else {
		// The store's version kept the name. The working copy keeps its
		// old base, so a further commit of it becomes another conflicted
		// copy rather than overwriting the remote edit.
		n.entry = cache.Entry{Name: n.entry.Name} // unknown until revalidated
	}
	if n.work != nil && !n.work.dirty && n.writers == 0 {
		n.work.close()
		n.work = nil
		if r.Conflict == nil && !r.Dropped {
			// The entry holds the attributes that were uploaded.
			n.mode, n.mtime = 0, time.Time{}
			n.owned, n.atime, n.ctime = false, time.Time{}, time.Time{}
		}
	}
}

// liveFile finds the in-memory node of a file, if the kernel holds it.
func (f *FS) liveFile(rel string) *fileNode {
	ino := f.liveInode(rel)
	if ino == nil {
		return nil
	}
	n, _ := ino.Operations().(*fileNode)
	return n
}

func (f *FS) liveInode(rel string) *fs.Inode {
	if f.root == nil {
		return nil
	}
	ino := f.root.EmbeddedInode()
	for _, part := range strings.Split(rel, "/") {
		if part == "" {
			continue
		}
		if ino = ino.GetChild(part); ino == nil {
			return nil
		}
	}
	return ino
}

// notifyEntries drops the kernel's cached entries for paths.
func (f *FS) notifyEntries(paths []string) {
	for _, p := range paths {
		dir, name := splitPath(p)
		parent := f.liveInode(dir)
		if parent == nil {
			continue
		}
		if errno := parent.NotifyEntry(name); errno != 0 && errno != syscall.ENOENT {
			f.log.Debug("notify entry", "path", p, "errno", errno)
		}
	}
}

// relPath maps a key to its path below the mount root.
func (f *FS) relPath(key string) (string, bool) {
	if !strings.HasPrefix(key, f.cfg.Prefix) {
		return "", false
	}
	return key[len(f.cfg.Prefix):], true
}

func splitPath(p string) (dir, name string) {
	dir, name = path.Split(p)
	return strings.TrimSuffix(dir, "/"), name
}

// Reconcile shows every pending journal op in the tree, for a mount that
// starts after a crash between a Commit and its tree update: the change is
// durable, so it must be visible.
func (f *FS) Reconcile() error {
	f.localMu.Lock()
	defer f.localMu.Unlock()
	// A file created but not closed before a crash has a Local entry and
	// no journal record: its create was never acknowledged, so it goes.
	err := f.cfg.Tree.LocalEntries(func(dir string, e cache.Entry) error {
		if e.Dir || e.Gone {
			return nil
		}
		if _, pending := f.cfg.Journal.Pending(f.fileKey(cache.JoinPath(dir, e.Name))); pending {
			return nil
		}
		if e.ETag != "" {
			// Uploaded, then the confirmation was lost: the store has it.
			e.Local = false
			return f.cfg.Tree.PutEntry(dir, e)
		}
		f.log.Info("dropping a file whose creation was never acknowledged", "path", cache.JoinPath(dir, e.Name))
		return f.cfg.Tree.RemoveEntry(dir, e.Name)
	})
	if err != nil {
		return err
	}
	for _, p := range f.cfg.Journal.PendingUnder(f.cfg.Prefix) {
		rel, ok := f.relPath(p.Key)
		if !ok {
			continue
		}
		if newest, _ := f.cfg.Journal.Pending(p.Key); newest.Seq != p.Seq {
			continue // a later op on the key decides what it shows
		}
		dir, name := splitPath(strings.TrimSuffix(rel, "/"))
		old, known, err := f.cfg.Tree.Get(dir, name)
		if err != nil {
			return err
		}
		var e cache.Entry
		switch p.Kind {
		case journal.PutFile:
			// The committed size, also when a crash came between the
			// commit and the tree update that shows it.
			e = cache.Entry{Name: name, Size: p.Size, Local: true}
			if known && !old.Dir {
				e.MTime = old.MTime
			}
			attrsFromMeta(p.Meta, &e) // the type and attributes committed
			if known && e.Type() == syscall.S_IFLNK && old.Type() == syscall.S_IFLNK {
				e.Target = old.Target
			}
		case journal.Copy, journal.PutMarker, journal.MoveTree:
			if known && old.Local && !old.Gone {
				continue // already shown
			}
			e = cache.Entry{Name: name, Dir: p.Kind != journal.Copy, Local: true}
			if p.Kind == journal.Copy {
				// The tree may hold the copy's result (a crash came
				// after Applied recorded it, before the journal removed
				// the op) or nothing of it: the size is the committed
				// one, the attributes the source's, which the shown
				// entry has.
				e.Size = p.Size
				if known && !old.Dir && !old.Gone {
					e.CopyAttrs(old)
					if e.Size == 0 {
						e.Size = old.Size // a record from before copies kept their size
					}
				}
			}
			attrsFromMeta(p.Meta, &e)
		case journal.Delete:
			e = cache.Entry{Name: name, Dir: strings.HasSuffix(p.Key, "/"), Local: true, Gone: true}
		default:
			continue // a restore shows once done (journal.Restore)
		}
		if err := f.cfg.Tree.PutEntry(dir, e); err != nil {
			return err
		}
		if e.Gone {
			// A tombstone shows nothing, so its folder need not show: the
			// old keys of a renamed folder must not bring it back.
			continue
		}
		if err := f.ensureParents(dir); err != nil {
			return err
		}
	}
	return nil
}

// ensureParents makes sure each folder above dir is shown.
func (f *FS) ensureParents(dir string) error {
	for dir != "" {
		parent, name := splitPath(dir)
		if _, ok, err := f.cfg.Tree.Lookup(parent, name); err != nil {
			return err
		} else if !ok {
			if err := f.cfg.Tree.PutEntry(parent, cache.Entry{Name: name, Dir: true, Local: true}); err != nil {
				return err
			}
		}
		dir = parent
	}
	return nil
}
