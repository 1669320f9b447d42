package vfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/nimbus-fs/nimbus/backend/trash"
	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// Namespace operations: create, mkdir, unlink, rmdir and rename of files
// (folder renames are in rename_dir.go). Each journals its change before it
// returns and shows it in the tree at once (Local entries, tombstones);
// write.go has the working copy of a file's content they start from.

var _ = (fs.NodeCreater)((*dirNode)(nil))

func (n *dirNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	ctx = uninterrupted(ctx)
	dir := n.path()
	key := n.fsys.fileKey(cache.JoinPath(dir, name))
	if err := n.checkNew(ctx, dir, key); err != nil {
		return nil, nil, 0, toErrno(n.fsys.log, "create", err)
	}
	base := journal.Base{}
	// A stale tombstone or a name the listing missed: If-None-Match
	// decides at upload time, and a clash becomes a conflicted copy.
	w, err := n.fsys.newWorkFile(ctx, nil, 0, base, nil)
	if err != nil {
		return nil, nil, 0, toErrno(n.fsys.log, "create", err)
	}
	w.dirty = true // an empty new file is a change too
	now := time.Now()
	e := cache.Entry{Name: name, MTime: now, ATime: now, CTime: now, Mode: syscall.S_IFREG | mode&0o7777, Attrs: true, Local: true}
	n.fsys.newOwner(caller(ctx), n.parentEntry(), &e)
	n.fsys.localMu.Lock()
	err = n.fsys.cfg.Tree.PutEntry(dir, e)
	if err == nil {
		n.fsys.touchDir(dir, now)
	}
	n.fsys.localMu.Unlock()
	if err != nil {
		w.close()
		removeQuietly(w.f.Name())
		return nil, nil, 0, toErrno(n.fsys.log, "create", err)
	}
	node := newFileNode(n.fsys, e)
	node.work, node.mtime, node.writers, node.unclosed = w, now, 1, 1
	node.mode, node.atime, node.ctime = e.Mode, now, now
	node.owned, node.uid, node.gid = e.Owner, e.UID, e.GID
	node.fillAttrLocked(&out.Attr)
	ch := n.fsys.newChild(ctx, n.EmbeddedInode(), dir, name, node, syscall.S_IFREG)
	return ch, &fileHandle{fsys: n.fsys, node: node, writable: true, appends: flags&syscall.O_APPEND != 0}, 0, 0
}

// checkNew validates a name to be created in dir.
func (n *dirNode) checkNew(ctx context.Context, dir, key string) error {
	if err := n.fsys.writable(); err != nil {
		return err
	}
	if err := checkSegments(key); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	return n.fsys.ensureListed(ctx, dir)
}

var _ = (fs.NodeMkdirer)((*dirNode)(nil))

func (n *dirNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ctx = uninterrupted(ctx)
	dir := n.path()
	path := cache.JoinPath(dir, name)
	key := n.fsys.fileKey(path) + "/"
	if err := n.checkNew(ctx, dir, key); err != nil {
		return nil, toErrno(n.fsys.log, "mkdir", err)
	}
	if _, ok, err := n.fsys.cfg.Tree.Lookup(dir, name); err != nil {
		return nil, toErrno(n.fsys.log, "mkdir", err)
	} else if ok {
		return nil, syscall.EEXIST
	}
	now := time.Now()
	e := cache.Entry{Name: name, Dir: true, MTime: now, ATime: now, CTime: now, Mode: syscall.S_IFDIR | mode&0o7777, Attrs: true, Local: true}
	parent := n.parentEntry()
	n.fsys.newOwner(caller(ctx), parent, &e)
	if parent.Mode&syscall.S_ISGID != 0 {
		e.Mode |= syscall.S_ISGID // inherited, as on Linux
	}
	n.fsys.localMu.Lock()
	defer n.fsys.localMu.Unlock()
	if err := n.fsys.cfg.Journal.Commit(journal.Op{Kind: journal.PutMarker, Key: key, Meta: attrMeta(e)}); err != nil {
		return nil, toErrno(n.fsys.log, "mkdir", err)
	}
	if err := n.fsys.cfg.Tree.PutEntry(dir, e); err != nil {
		return nil, toErrno(n.fsys.log, "mkdir", err)
	}
	n.fsys.touchDir(dir, now)
	// The new folder is known to be empty: no listing needed, even offline.
	if err := n.fsys.cfg.Tree.ReplaceDir(path, nil, key, nil, time.Now()); err != nil {
		return nil, toErrno(n.fsys.log, "mkdir", err)
	}
	n.fsys.fillDirAttr(path, e, &out.Attr)
	return n.fsys.newChild(ctx, n.EmbeddedInode(), dir, name, &dirNode{fsys: n.fsys}, syscall.S_IFDIR), 0
}

var _ = (fs.NodeUnlinker)((*dirNode)(nil))

func (n *dirNode) Unlink(ctx context.Context, name string) syscall.Errno {
	ctx = uninterrupted(ctx)
	dir := n.path()
	if err := n.fsys.writable(); err != nil {
		return toErrno(n.fsys.log, "unlink", err)
	}
	if err := n.fsys.listedOnce(ctx, dir); err != nil {
		return toErrno(n.fsys.log, "unlink", err)
	}
	if fn := openForReading(n.GetChild(name)); fn != nil {
		// A handle opened before the unlink reads the version it opened
		// (POSIX), but the delete removes the object its missing bytes
		// would come from: keep that version first, as an open for
		// writing does (a local copy, or a server-side snapshot of a
		// large uncached file). Outside localMu: it may download.
		fn.keepOpenedVersion(ctx)
	}
	n.fsys.localMu.Lock()
	defer n.fsys.localMu.Unlock()
	e, ok, err := n.fsys.shownEntry(dir, name, n.GetChild(name))
	switch {
	case err != nil:
		return toErrno(n.fsys.log, "unlink", err)
	case !ok:
		return syscall.ENOENT
	case e.Dir:
		return syscall.EISDIR
	}
	key := n.fsys.fileKey(cache.JoinPath(dir, name))
	op := journal.Op{Kind: journal.Delete, Key: key, Base: remoteBase(e), Trash: n.fsys.trashKey(cache.JoinPath(dir, name))}
	if err := n.fsys.cfg.Journal.Commit(op); err != nil {
		return toErrno(n.fsys.log, "unlink", err)
	}
	if err := n.fsys.removeLocally(dir, name, false); err != nil {
		return toErrno(n.fsys.log, "unlink", err)
	}
	n.fsys.touchDir(dir, time.Now())
	if openForReading(n.GetChild(name)) == nil {
		// Its blocks go now; a handle still open reads them until it is
		// closed (POSIX), and eviction takes them later.
		n.fsys.cfg.Blocks.Forget(key, "")
	}
	return 0
}

// openForReading returns ch's file node if it has a read-only handle open
// through nimbus (a passthrough one holds its blocks itself), else nil.
func openForReading(ch *fs.Inode) *fileNode {
	if ch == nil {
		return nil
	}
	fn, ok := ch.Operations().(*fileNode)
	if !ok {
		return nil
	}
	fn.mu.Lock()
	defer fn.mu.Unlock()
	if fn.readers == 0 {
		return nil
	}
	return fn
}

// trashKey is where a delete of the file at path keeps it: its trash key,
// or "" when the trash is off or cannot hold it (a key over S3's limit),
// which the log says.
func (f *FS) trashKey(path string) string {
	if !f.cfg.Trash {
		return ""
	}
	key := trash.Key(f.cfg.Prefix, path, time.Now())
	if len(key) > maxKeyLen {
		f.log.Warn("deleted for good: its trash key would be longer than 1,024 bytes", "path", path)
		return ""
	}
	return key
}

// shownEntry is the version of dir/name this machine showed: the live
// node's (as the kernel looked it up or opened it), else the tree's. The
// folder is not re-listed first: a delete or rename must be conditional on
// what the user saw, so that a remote edit they never saw survives it.
// Called with f.localMu held, after listedOnce: an upload finishing
// concurrently (FS.applied) is then either fully seen or not at all.
func (f *FS) shownEntry(dir, name string, live *fs.Inode) (cache.Entry, bool, error) {
	e, ok, err := f.cfg.Tree.Lookup(dir, name)
	if err != nil || live == nil {
		return e, ok, err
	}
	if fn, isFile := live.Operations().(*fileNode); isFile {
		shown := fn.getEntry()
		if shown.ETag == "" {
			// Shown before its upload finished: the tree has the result.
			shown.ETag = e.ETag
		}
		return shown, true, nil
	}
	return e, ok, nil
}

// listedOnce lists dir if it never was: a change needs to know what is
// there, but not a fresher listing than the user saw.
func (f *FS) listedOnce(ctx context.Context, dir string) error {
	if _, listed, err := f.cfg.Tree.Dir(dir); err != nil || listed {
		return err
	}
	return f.ensureListed(ctx, dir)
}

// removeLocally hides dir/name until the store confirms its removal: a
// tombstone while an op on the key is pending, nothing once none is (the
// journal cancelled a create-then-delete). Called with f.localMu held, after
// the Commit, so that FS.applied cannot slip in between.
func (f *FS) removeLocally(dir, name string, isDir bool) error {
	key := f.fileKey(cache.JoinPath(dir, name))
	if isDir {
		key += "/"
	}
	if _, pending := f.cfg.Journal.Pending(key); !pending {
		return f.cfg.Tree.RemoveEntry(dir, name)
	}
	return f.cfg.Tree.PutEntry(dir, cache.Entry{Name: name, Dir: isDir, Local: true, Gone: true})
}

var _ = (fs.NodeRmdirer)((*dirNode)(nil))

func (n *dirNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	ctx = uninterrupted(ctx)
	dir := n.path()
	path := cache.JoinPath(dir, name)
	if err := n.fsys.writable(); err != nil {
		return toErrno(n.fsys.log, "rmdir", err)
	}
	if err := n.fsys.ensureListed(ctx, dir); err != nil {
		return toErrno(n.fsys.log, "rmdir", err)
	}
	e, ok, err := n.fsys.cfg.Tree.Lookup(dir, name)
	switch {
	case err != nil:
		return toErrno(n.fsys.log, "rmdir", err)
	case !ok:
		return syscall.ENOENT
	case !e.Dir:
		return syscall.ENOTDIR
	}
	if err := n.fsys.ensureListed(ctx, path); err != nil {
		return toErrno(n.fsys.log, "rmdir", err)
	}
	empty := true
	if err := n.fsys.cfg.Tree.Children(path, func(cache.Entry) bool { empty = false; return false }); err != nil {
		return toErrno(n.fsys.log, "rmdir", err)
	}
	if !empty {
		return syscall.ENOTEMPTY
	}
	// The marker goes whatever its ETag: an empty folder has nothing to lose.
	op := journal.Op{Kind: journal.Delete, Key: n.fsys.fileKey(path) + "/", Base: journal.Base{Exists: true}}
	n.fsys.localMu.Lock()
	defer n.fsys.localMu.Unlock()
	if err := n.fsys.cfg.Journal.Commit(op); err != nil {
		return toErrno(n.fsys.log, "rmdir", err)
	}
	if err := n.fsys.removeLocally(dir, name, true); err != nil {
		return toErrno(n.fsys.log, "rmdir", err)
	}
	n.fsys.folderRemoved(op.Key)
	n.fsys.touchDir(dir, time.Now())
	return 0
}

var _ = (fs.NodeRenamer)((*dirNode)(nil))

// Rename moves a file or a folder. Files with local content are
// re-uploaded under the new name; clean files are copied server-side; the
// old key is deleted on the condition that it did not change remotely.
func (n *dirNode) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	ctx = uninterrupted(ctx)
	if flags&^uint32(unixRenameNoReplace) != 0 {
		return syscall.EINVAL // RENAME_EXCHANGE, RENAME_WHITEOUT: not supported
	}
	dst, ok := newParent.(*dirNode)
	if !ok {
		return syscall.EXDEV
	}
	srcDir, dstDir := n.path(), dst.path()
	err := n.fsys.rename(ctx, srcDir, name, dstDir, newName, flags&unixRenameNoReplace != 0, n.GetChild(name), dst.GetChild(newName))
	return toErrno(n.fsys.log, "rename", err)
}

const unixRenameNoReplace = 1 // RENAME_NOREPLACE

func (f *FS) rename(ctx context.Context, srcDir, name, dstDir, newName string, noReplace bool, live, liveDst *fs.Inode) error {
	if err := f.writable(); err != nil {
		return err
	}
	dstKey := f.fileKey(cache.JoinPath(dstDir, newName))
	if err := checkSegments(dstKey); err != nil {
		return err
	}
	if err := checkKey(dstKey + "/"); err != nil {
		return err
	}
	for _, d := range []string{srcDir, dstDir} {
		if err := f.listedOnce(ctx, d); err != nil {
			return err
		}
	}
	f.localMu.Lock()
	src, ok, err := f.shownEntry(srcDir, name, live)
	f.localMu.Unlock()
	if err != nil {
		return err
	}
	if !ok {
		return syscall.ENOENT
	}
	f.localMu.Lock()
	old, exists, err := f.shownEntry(dstDir, newName, liveDst)
	f.localMu.Unlock()
	if err != nil {
		return err
	}
	if exists {
		switch {
		case noReplace:
			return syscall.EEXIST
		case src.Dir && !old.Dir:
			return syscall.ENOTDIR
		case !src.Dir && old.Dir:
			return syscall.EISDIR
		case old.Dir:
			if err := f.ensureListed(ctx, cache.JoinPath(dstDir, newName)); err != nil {
				return err
			}
			empty := true
			if err := f.cfg.Tree.Children(cache.JoinPath(dstDir, newName), func(cache.Entry) bool { empty = false; return false }); err != nil {
				return err
			}
			if !empty {
				return syscall.ENOTEMPTY
			}
		}
	}
	if src.Dir {
		if err := f.renameDir(ctx, srcDir, name, dstDir, newName, exists); err != nil {
			return err
		}
		if hook := renameDirHook.Load(); hook != nil {
			(*hook)("committed")
		}
		// Files the kernel holds under the folder now have new keys, whose
		// pending copies or uploads their next commits chain onto.
		if live != nil {
			f.resetMoved(live, cache.JoinPath(dstDir, newName))
		}
		if hook := renameDirHook.Load(); hook != nil {
			(*hook)("reset")
		}
		f.renamed(srcDir, dstDir)
		return nil
	}
	if exists {
		if fn := openForReading(liveDst); fn != nil {
			// The file replaced stays readable through its open
			// handles, as an unlinked one does (see dirNode.Unlink).
			fn.keepOpenedVersion(ctx)
		}
	}
	if err := f.renameFile(srcDir, name, dstDir, newName, live, liveDst); err != nil {
		return err
	}
	f.renamed(srcDir, dstDir)
	return nil
}

// renameFile journals the move of one file and updates the tree.
func (f *FS) renameFile(srcDir, name, dstDir, newName string, live, liveDst *fs.Inode) error {
	srcKey := f.fileKey(cache.JoinPath(srcDir, name))
	dstKey := f.fileKey(cache.JoinPath(dstDir, newName))
	var node *fileNode
	if live != nil {
		node, _ = live.Operations().(*fileNode)
	}
	// The local content is copied first, without the lock: it is disk I/O.
	w, err := f.copyLocalContent(srcKey, node)
	if err != nil {
		return err
	}
	f.localMu.Lock()
	defer f.localMu.Unlock()
	// Both versions are read again under the lock of the commit: an upload
	// of either that finished since is then seen, and one still running
	// is chained onto by the journal. A base read earlier could name the
	// version before our own upload, and the delete or overwrite would
	// then look like a conflict with ourselves.
	src, ok, err := f.shownEntry(srcDir, name, live)
	if err == nil && !ok {
		err = syscall.ENOENT
	}
	old, dstExists, err2 := f.shownEntry(dstDir, newName, liveDst)
	if err = errors.Join(err, err2); err != nil {
		if w != nil {
			removeQuietly(w.f.Name())
		}
		return err
	}
	dstBase := journal.Base{}
	if dstExists {
		dstBase = remoteBase(old)
	}
	var first journal.Op
	size := src.Size
	if w != nil {
		// Local content: upload it under the new name.
		size = w.size
		first = journal.Op{Kind: journal.PutFile, Key: dstKey, Staged: w.f.Name(), Base: dstBase, Meta: attrMeta(withMTime(src)), Partial: w.partial.describe()}
	} else {
		first = journal.Op{Kind: journal.Copy, Key: dstKey, Src: srcKey, SrcETag: src.ETag, Size: size, Base: dstBase}
	}
	del := journal.Op{Kind: journal.Delete, Key: srcKey, Base: remoteBase(src)}
	if err := f.cfg.Journal.Commit(first, del); err != nil {
		return err
	}
	if node != nil {
		node.mu.Lock()
		// Local until the copy or upload under the new name is done: no
		// revalidation against a key the store does not have yet.
		node.entry.Local = true
		if node.work != nil {
			node.work.base = dstBase
			node.work.changes.forget() // they were relative to the old key
			node.work.dirty = false    // its content is journaled under the new name
		}
		node.mu.Unlock()
	}
	if err := f.removeLocally(srcDir, name, false); err != nil {
		return err
	}
	// The source's cached blocks stay: the file is read from them until
	// the server-side copy is done.
	moved := cache.Entry{Name: newName, Size: size, Local: true}
	moved.CopyAttrs(src)
	moved.CTime = time.Now() // a rename changes the inode
	return f.cfg.Tree.PutEntry(dstDir, moved)
}

// copyLocalContent copies the content of a file that exists only locally
// or has local changes (the live node's working copy, read through its open
// descriptor, or the journal's staged file) into a new staging file, closed
// and ready to commit. Content whose bytes never change (a committed copy,
// a staged file), and that is whole, is linked rather than copied
// (linkStaged). It returns nil when the store has the current content.
func (f *FS) copyLocalContent(key string, node *fileNode) (*workFile, error) {
	if node != nil {
		node.mu.Lock()
		defer node.mu.Unlock() // local disk I/O only
		if w := node.work; w != nil && (w.committed || w.linked) && w.partial == nil {
			if lw, err := f.linkStaged(w.f.Name(), w.size); err == nil {
				lw.close()
				return lw, nil
			}
			// Uploaded meanwhile (the journal removed the name): copy.
		}
		if node.work != nil {
			w, err := f.newWorkFile(context.Background(), node.work.f, node.work.size, journal.Base{}, node.work.partial)
			if err != nil {
				return nil, err
			}
			w.close()
			return w, nil
		}
	}
	path, size, part, ok := f.pendingContent(key)
	if !ok {
		return nil, nil
	}
	if part == nil {
		if lw, err := f.linkStaged(path, size); err == nil {
			lw.close()
			return lw, nil
		}
		// Copied instead, or found uploaded meanwhile, below.
	}
	staged, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // uploaded meanwhile: the store has it
	}
	if err != nil {
		return nil, fmt.Errorf("pending content of %q: %w", key, err)
	}
	defer staged.Close()
	w, err := f.newWorkFile(context.Background(), staged, size, journal.Base{}, part)
	if err != nil {
		return nil, err
	}
	w.close()
	return w, nil
}
