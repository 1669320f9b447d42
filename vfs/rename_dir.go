package vfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fs"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// renameDir moves a folder: every key under it is copied server-side and
// deleted, and pending local changes under it are moved with it. The keys
// come from a flat listing, or, when the store is offline, from the
// persisted tree (what this machine saw). Either way the whole move is one
// journal commit of ops conditioned on each key's version: it is durable
// before rename(2) returns, survives a crash whole or not at all, and runs
// when the store can be reached.
//
// The keys and the pending ops are read before the commit's lock (the
// listing is network I/O). An upload or delete under the folder that
// completes meanwhile would make them disagree: a key deleted here would be
// listed but no longer pending, and be copied back under the new name. So
// when one completed, the move is prepared again (as listDir lists again).
func (f *FS) renameDir(ctx context.Context, srcDir, name, dstDir, newName string, dstExists bool) error {
	srcPath := cache.JoinPath(srcDir, name)
	for attempt := 1; ; attempt++ {
		f.localMu.Lock()
		gen := f.appliedUnderLocked(srcPath)
		f.localMu.Unlock()
		done, err := f.tryRenameDir(ctx, srcDir, name, dstDir, newName, gen, attempt == maxRelist)
		if done || err != nil {
			return err
		}
	}
}

// appliedUnderLocked sums the completions recorded (FS.applied) in the
// folder at path and below it. Called with f.localMu held.
func (f *FS) appliedUnderLocked(path string) uint64 {
	var n uint64
	for dir, c := range f.applied {
		if path == "" || dir == path || strings.HasPrefix(dir, path+"/") {
			n += c
		}
	}
	return n
}

// tryRenameDir prepares and commits one attempt of renameDir. It reports
// done = false, with nothing changed, when a completion under the folder
// since gen (appliedUnderLocked) may have made the listing or the pending
// ops stale, unless last is set.
func (f *FS) tryRenameDir(ctx context.Context, srcDir, name, dstDir, newName string, gen uint64, last bool) (done bool, err error) {
	srcPath := cache.JoinPath(srcDir, name)
	srcPrefix := f.dirKeyPrefix(srcPath)
	dstPrefix := f.dirKeyPrefix(cache.JoinPath(dstDir, newName))
	objs, err := f.dirObjects(ctx, srcPath, srcPrefix)
	if err != nil {
		return false, fmt.Errorf("rename folder %q: %w", srcPrefix, err)
	}
	pending := make(map[string]journal.PendingOp)
	var trees []string // folders still being moved by a pending MoveTree
	for _, p := range f.cfg.Journal.PendingUnder(srcPrefix) {
		pending[p.Key] = p // newest last
		if p.Kind == journal.MoveTree {
			trees = append(trees, p.Key)
		}
	}
	// Each key moves as its own group (copy, then delete the old key), so
	// keys move in parallel; the journal orders each pair.
	var ops []journal.Op
	groups := 0
	var staged []string
	var shown []cache.Entry // entries to show under the new folder, Name = path below it
	var settle []int        // deletes of keys that had pending ops: indexes in ops
	moveKey := func(o dirObject) error {
		key, etag, size := o.key, o.etag, o.size
		rest := key[len(srcPrefix):]
		newKey := dstPrefix + rest
		if err := checkKey(newKey); err != nil {
			return fmt.Errorf("new name of %q: %w", key, err)
		}
		del := journal.Op{Kind: journal.Delete, Key: key, Base: journal.Base{Exists: etag != "", ETag: etag}}
		withDelete := true
		var move journal.Op
		p, hadPending := pending[key]
		if hadPending {
			delete(pending, key)
			switch p.Kind {
			case journal.Delete:
				return nil // already going away
			case journal.MoveTree:
				// Its keys are still arriving: they move on from there
				// once they have.
				move, withDelete = journal.Op{Kind: journal.MoveTree, Key: newKey, Src: key}, false
			case journal.PutMarker:
				move = journal.Op{Kind: journal.PutMarker, Key: newKey}
			case journal.PutFile:
				w, err := f.copyStaged(ctx, p)
				switch {
				case errors.Is(err, os.ErrNotExist):
					// Uploaded meanwhile: copy it like the pending
					// copy below. The store has this content now, of
					// the committed size (a listing may predate it).
					size = p.Size
					move = journal.Op{Kind: journal.Copy, Key: newKey, Src: key, Size: size}
				case err != nil:
					return err
				default:
					staged = append(staged, w.f.Name())
					size = p.Size
					move = journal.Op{Kind: journal.PutFile, Key: newKey, Staged: w.f.Name(), Meta: p.Meta, Partial: w.partial.describe()}
				}
			case journal.Copy:
				// Copied from the pending copy's result, which the
				// journal chains onto: its own source goes away with
				// the rename that made it. Its size is the one the
				// copy was committed with: a listing still shows the
				// object it replaces, if any.
				size = f.pendingCopySize(p, size)
				move = journal.Op{Kind: journal.Copy, Key: newKey, Src: key, Size: size}
			}
		} else if o.tree {
			move, withDelete = journal.Op{Kind: journal.MoveTree, Key: newKey, Src: key}, false
		} else if strings.HasSuffix(key, "/") {
			move = journal.Op{Kind: journal.PutMarker, Key: newKey}
		} else {
			move = journal.Op{Kind: journal.Copy, Key: newKey, Src: key, SrcETag: etag, Size: size}
		}
		if strings.HasSuffix(key, "/") {
			del.Base = journal.Base{Exists: true} // markers go whatever their ETag
		}
		move.Group, del.Group = groups, groups
		groups++
		ops = append(ops, move)
		if withDelete {
			if hadPending {
				settle = append(settle, len(ops)) // its base is set under the commit's lock
			}
			ops = append(ops, del)
		}
		if rest = strings.TrimSuffix(rest, "/"); rest != "" {
			e := cache.Entry{Name: rest, Dir: strings.HasSuffix(newKey, "/"), Size: size, Local: true}
			if !e.Dir {
				if attrs, ok := f.movedAttrs(key, o); ok {
					// The file keeps its mode, owner and times: a later
					// edit under the new name stores what it shows.
					e.CopyAttrs(attrs)
				}
			}
			shown = append(shown, e)
		}
		return nil
	}
	for _, o := range objs {
		if slices.ContainsFunc(trees, func(t string) bool { return o.key != t && strings.HasPrefix(o.key, t) }) {
			continue // moved on by the MoveTree of its folder (above)
		}
		if err = moveKey(o); err != nil {
			break
		}
	}
	if err == nil {
		for key := range pending { // local-only keys the store does not have yet
			if err = moveKey(dirObject{key: key}); err != nil {
				break
			}
		}
	}
	if err == nil && !hasKey(ops, dstPrefix) {
		// Keep the folder even if empty.
		ops = append(ops, journal.Op{Kind: journal.PutMarker, Key: dstPrefix, Group: groups})
	}
	f.localMu.Lock()
	defer f.localMu.Unlock()
	if err == nil && !last && f.appliedUnderLocked(srcPath) != gen {
		for _, s := range staged {
			removeQuietly(s)
		}
		return false, nil // overtaken by a completion: prepare it again
	}
	if err == nil {
		f.settleMovedBases(ops, settle)
		err = f.cfg.Journal.Commit(ops...)
	}
	if err != nil {
		for _, s := range staged {
			removeQuietly(s)
		}
		return false, fmt.Errorf("rename folder %q: %w", srcPrefix, err)
	}
	if err := f.cfg.Tree.MoveDir(srcDir, name, dstDir, newName); err != nil {
		return true, err
	}
	f.foldersRemoved(ops)

	// Show what moved, also what was never listed under the old name.
	dst := cache.JoinPath(dstDir, newName)
	for _, e := range shown {
		dir, base := splitPath(cache.JoinPath(dst, e.Name))
		e.Name = base
		if err := f.cfg.Tree.PutEntry(dir, e); err != nil {
			return true, err
		}
		if err := f.ensureParents(dir); err != nil {
			return true, err
		}
	}
	return true, nil
}

// pendingCopySize is the size of the file a pending copy p makes: the size
// it was committed with. A record from before copies kept their size says
// 0, as does the copy of an empty file: then the tree's entry, which the
// rename that made the copy wrote, tells, and failing that the size the
// listing showed under the name (listed).
func (f *FS) pendingCopySize(p journal.PendingOp, listed int64) int64 {
	if p.Size > 0 {
		return p.Size
	}
	if rel, ok := f.relPath(p.Key); ok {
		dir, name := splitPath(rel)
		e, known, err := f.cfg.Tree.Get(dir, name)
		if err != nil {
			f.log.Warn("size of a pending copy", "key", p.Key, "err", err)
		} else if known && e.Local && !e.Dir && !e.Gone {
			return e.Size
		}
	}
	return listed
}

// movedAttrs returns the attributes a file moved by a folder rename keeps:
// those of the entry the tree shows for its old key (a listing carries
// none), or of the tree's entry found when the keys came from the tree.
func (f *FS) movedAttrs(key string, o dirObject) (cache.Entry, bool) {
	if !o.entry.MTime.IsZero() {
		return o.entry, true
	}
	rel, ok := f.relPath(key)
	if !ok {
		return cache.Entry{}, false
	}
	dir, name := splitPath(rel)
	e, ok, err := f.cfg.Tree.Get(dir, name)
	if err != nil {
		f.log.Warn("attributes of a moved file", "key", key, "err", err)
		return cache.Entry{}, false
	}
	return e, ok && !e.Dir && !e.Gone && (e.Attrs || !e.MTime.IsZero())
}

// dirObject is a key under a folder being renamed, as the store listed it
// or as the persisted tree knows it (entry, for its attributes).
type dirObject struct {
	key, etag string
	size      int64
	entry     cache.Entry
	// tree: a folder (key is its prefix) whose content is unknown here,
	// moved as the store lists it when the move runs (journal.MoveTree).
	tree bool
}

// errNeverListed: offline, a folder never listed here that holds pending
// local changes cannot be renamed (a MoveTree would race them).
var errNeverListed = errors.New("it holds a folder never listed here with changes not uploaded yet: rename it once the store is reachable")

// dirObjects returns the keys under the folder at path (key prefix
// prefix): a flat listing when the store is online, else what the persisted
// tree knows. Offline, a rename is conditioned on the versions the user
// saw, like every other change; a key the tree does not know (created
// remotely since the last listing) is not moved, and stays where it is.
func (f *FS) dirObjects(ctx context.Context, path, prefix string) ([]dirObject, error) {
	if f.online() {
		var objs []dirObject
		err := f.cfg.Store.ListFlat(ctx, prefix, func(p backend.Page) error {
			for _, o := range p.Objects { // no sidecar: the attribute index hides them
				objs = append(objs, dirObject{key: o.Key, etag: o.ETag, size: o.Size})
			}
			return nil
		})
		if !errors.Is(err, backend.ErrOffline) {
			return objs, err
		}
		f.log.Info("store unreachable while listing a folder to rename; moving what the tree knows", "prefix", prefix, "err", err)
	}
	return f.knownObjects(path)
}

// knownObjects returns the keys the persisted tree knows under the folder
// at path, every folder below it included. Each folder gets its marker
// moved (a Delete of an absent marker is a no-op), so that empty folders
// survive the move. Files with local changes and no remote version are
// left to the pending ops (renameDir), and an unclosed new file, which has
// neither, moves with its node. A folder never listed here is moved whole,
// as the store will list it (journal.MoveTree): the user never saw what it
// holds, so all of it is what they moved.
func (f *FS) knownObjects(path string) ([]dirObject, error) {
	var objs []dirObject
	var walk func(dir string) error
	walk = func(dir string) error {
		if _, listed, err := f.cfg.Tree.Dir(dir); err != nil {
			return err
		} else if !listed {
			prefix := f.dirKeyPrefix(dir)
			for _, p := range f.cfg.Journal.PendingUnder(prefix) {
				if p.Kind != journal.MoveTree || p.Key != prefix { // moved here unlisted: moved on
					return fmt.Errorf("%q: %w", dir, errNeverListed)
				}
			}
			objs = append(objs, dirObject{key: prefix, tree: true})
			return nil
		}
		objs = append(objs, dirObject{key: f.dirKeyPrefix(dir)})
		var subs []string
		err := f.cfg.Tree.Children(dir, func(e cache.Entry) bool {
			p := cache.JoinPath(dir, e.Name)
			switch {
			case e.Dir:
				subs = append(subs, p)
			case e.ETag != "":
				objs = append(objs, dirObject{key: f.fileKey(p), etag: e.ETag, size: e.Size, entry: e})
			}
			return true
		})
		if err != nil {
			return err
		}
		for _, s := range subs {
			if err := walk(s); err != nil {
				return err
			}
		}
		return nil
	}
	return objs, walk(path)
}

// settleMovedBases sets the condition of the deletes ops[i], i in idx, of
// keys that had local ops pending when a folder rename was prepared. Called
// with f.localMu held, so that FS.applied cannot run until the commit. The
// newest version of such a key is this machine's: an op still pending has
// a Local tree entry and cannot finish before the commit (its Applied waits
// for the lock), and the journal chains the delete onto it; one that
// finished meanwhile left its ETag in the tree.
func (f *FS) settleMovedBases(ops []journal.Op, idx []int) {
	for _, i := range idx {
		del := &ops[i]
		del.Base = journal.Base{}
		if strings.HasSuffix(del.Key, "/") {
			del.Base = journal.Base{Exists: true} // markers go whatever their ETag
			continue
		}
		rel, ok := f.relPath(del.Key)
		if !ok {
			continue
		}
		dir, name := splitPath(rel)
		if e, ok, err := f.cfg.Tree.Get(dir, name); err == nil && ok && !e.Local {
			del.Base = remoteBase(e)
		}
	}
}

// copyStaged copies the content of pending PutFile p into a new staging
// file, closed and ready to commit. os.ErrNotExist: p was uploaded and its
// content removed.
func (f *FS) copyStaged(ctx context.Context, p journal.PendingOp) (*workFile, error) {
	content, err := os.Open(p.Staged)
	if err != nil {
		return nil, err
	}
	defer content.Close()
	w, err := f.newWorkFile(ctx, content, p.Size, journal.Base{}, f.fromJournal(p.Partial))
	if err != nil {
		return nil, err
	}
	w.close()
	return w, nil
}

// renameDirHook, when set (by tests), runs in Rename after a folder
// rename's commit ("committed") and after resetMoved ("reset"). Atomic:
// the kernel's round trip between a test and the FUSE server is no
// synchronization the race detector sees.
var renameDirHook atomic.Pointer[func(stage string)]

// resetMoved gives the live files below ino, a folder just renamed to dir,
// the versions of their new keys. While a file's copy to its new key is
// pending, that is none: its next commit chains onto the copy, and the
// copy's completion settles the node, found through FS.moving until the
// kernel has moved it to its new path. A copy that completed before this
// ran found no node at all, so the node takes that version from the tree
// here; forgetting it would base the next edit on "absent".
func (f *FS) resetMoved(ino *fs.Inode, dir string) {
	f.localMu.Lock() // against Applied: the tree and the node change together
	defer f.localMu.Unlock()
	f.resetMovedLocked(ino, dir)
}

func (f *FS) resetMovedLocked(ino *fs.Inode, dir string) {
	for name, ch := range ino.Children() {
		switch n := ch.Operations().(type) {
		case *dirNode:
			f.resetMovedLocked(ch, cache.JoinPath(dir, name))
		case *fileNode:
			e, ok, err := f.cfg.Tree.Get(dir, name)
			if err != nil {
				f.log.Warn("read the tree after a folder rename", "dir", dir, "name", name, "err", err)
			}
			landed := err == nil && ok && !e.Dir && !e.Local && e.ETag != ""
			key := f.fileKey(cache.JoinPath(dir, name))
			n.mu.Lock()
			if landed {
				n.entry.ETag, n.entry.Size, n.entry.Local = e.ETag, e.Size, false
				n.entry.CopyAttrs(e)
				n.ownETag = e.ETag
				n.movedTo = ""
			} else {
				n.entry.ETag, n.entry.Local = "", true
				n.ownETag = ""
				n.movedTo = key
				f.moving[key] = n
			}
			if n.work != nil {
				n.work.base = journal.Base{}
				if landed {
					n.work.base = journal.Base{Exists: true, ETag: e.ETag}
				}
				n.work.changes.forget()
			}
			n.mu.Unlock()
		}
	}
}

func hasKey(ops []journal.Op, key string) bool {
	for _, op := range ops {
		if op.Key == key && op.Kind != journal.Delete {
			return true
		}
	}
	return false
}

// treeMoved shows a folder whose MoveTree finished: its listing is the
// store's now, and the old folder's tombstone, when the whole folder was
// moved that way, has done its work. Called from Applied with f.localMu
// held.
func (f *FS) treeMoved(r journal.Result) {
	rel, ok := f.relPath(strings.TrimSuffix(r.Op.Key, "/"))
	if !ok {
		return
	}
	dir, name := splitPath(rel)
	f.putEntry(dir, cache.Entry{Name: name, Dir: true})
	if err := f.cfg.Tree.MarkStale(rel); err != nil {
		f.log.Warn("mark stale", "dir", rel, "err", err)
	}
	if src, ok := f.relPath(strings.TrimSuffix(r.Op.Src, "/")); ok {
		f.dropTombstone(splitPath(src))
	}
}
