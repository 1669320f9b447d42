package vfs

import (
	"context"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// Symlinks and special files.
//
// A symlink is an object whose body is its target, typed S_IFLNK in its
// metadata and in the attribute index, which also carries the target (up
// to attrindex.MaxTarget bytes), so that ls -l shows it with no request per
// entry; a longer target is read from the body at readlink. FIFOs,
// sockets and character and block devices are empty objects typed by
// their mode (a device's number in nimbus-rdev): the kernel serves the
// pipe, socket or device itself, nimbus only names it. Changing one of
// them (chmod, chown, utimens) uploads it again: it is a few bytes.

// metaNode is a symlink or a special file. Its state is its tree entry;
// last is the entry seen last, which describes it once unlinked.
type metaNode struct {
	fs.Inode
	fsys *FS

	mu   sync.Mutex
	last cache.Entry // GUARDED_BY(mu)
}

func (n *metaNode) remember(e cache.Entry) {
	n.mu.Lock()
	n.last = e
	n.mu.Unlock()
}

// entry returns the node's parent folder and its entry there (ok false:
// unlinked).
func (n *metaNode) entry() (dir string, e cache.Entry, ok bool, err error) {
	name, parent := n.Parent()
	n.mu.Lock()
	last := n.last
	n.mu.Unlock()
	if parent == nil {
		return "", last, false, nil
	}
	dir = parent.Path(nil)
	e, ok, err = n.fsys.cfg.Tree.Lookup(dir, name)
	if err != nil || !ok || !isMetaOnly(e) {
		return dir, last, false, err
	}
	n.remember(e)
	return dir, e, true, nil
}

var _ = (fs.NodeGetattrer)((*metaNode)(nil))

func (n *metaNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	_, e, ok, err := n.entry()
	if err != nil {
		return toErrno(n.fsys.log, "getattr", err)
	}
	n.fsys.fillFileAttr(e, &out.Attr)
	if !ok {
		out.Nlink = 0
	}
	return 0
}

var _ = (fs.NodeReadlinker)((*metaNode)(nil))

func (n *metaNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	dir, e, _, err := n.entry()
	if err != nil {
		return nil, toErrno(n.fsys.log, "readlink", err)
	}
	if e.Type() != syscall.S_IFLNK {
		return nil, syscall.EINVAL
	}
	if e.Target != "" {
		return []byte(e.Target), 0
	}
	target, err := n.fsys.readTarget(ctx, n.fsys.fileKey(cache.JoinPath(dir, e.Name)), e)
	if err != nil {
		return nil, toErrno(n.fsys.log, "readlink", err)
	}
	e.Target = target
	n.fsys.localMu.Lock()
	if cur, ok, err := n.fsys.cfg.Tree.Lookup(dir, e.Name); err == nil && ok && cur.ETag == e.ETag && cur.Target == "" {
		cur.Target = target // a symlink's body never changes under one ETag
		n.fsys.putEntry(dir, cur)
	}
	n.fsys.localMu.Unlock()
	n.remember(e)
	return []byte(target), 0
}

// bodyGetter reads an object's body.
type bodyGetter interface {
	Get(ctx context.Context, key string, off, n int64, ifMatch string) (io.ReadCloser, error)
}

// readTarget reads a symlink's target from its object's body.
func (f *FS) readTarget(ctx context.Context, key string, e cache.Entry) (string, error) {
	g, ok := f.cfg.Store.(bodyGetter)
	if !ok {
		return "", fmt.Errorf("read symlink %q: the store cannot read objects: %w", key, syscall.EIO)
	}
	r, err := g.Get(ctx, key, 0, -1, e.ETag)
	if err != nil {
		return "", fmt.Errorf("read symlink %q: %w", key, err)
	}
	defer r.Close()
	body, err := io.ReadAll(io.LimitReader(r, maxSymlinkLen+1))
	if err != nil {
		return "", fmt.Errorf("read symlink %q: %w", key, err)
	}
	if len(body) > maxSymlinkLen || len(body) == 0 {
		return "", fmt.Errorf("symlink %q has a body of %d bytes: %w", key, len(body), syscall.EIO)
	}
	return string(body), nil
}

// maxSymlinkLen is PATH_MAX less the NUL: the longest target symlink(2)
// takes.
const maxSymlinkLen = 4095

var _ = (fs.NodeSetattrer)((*metaNode)(nil))

// Setattr changes the mode, owner or times of a symlink or special file:
// the object goes up again with the new metadata.
func (n *metaNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	ctx = uninterrupted(ctx)
	if _, ok := in.GetSize(); ok {
		return syscall.EINVAL
	}
	if err := n.fsys.writable(); err != nil {
		return toErrno(n.fsys.log, "setattr", err)
	}
	dir, e, ok, err := n.entry()
	if err != nil {
		return toErrno(n.fsys.log, "setattr", err)
	}
	if !ok {
		return syscall.ENOENT
	}
	changed := setAttrs(n.fsys, &e, in)
	if changed {
		if e.Type() == syscall.S_IFLNK && e.Target == "" {
			target, err := n.fsys.readTarget(ctx, n.fsys.fileKey(cache.JoinPath(dir, e.Name)), e)
			if err != nil {
				return toErrno(n.fsys.log, "setattr", err)
			}
			e.Target = target
		}
		if err := n.fsys.putMetaOnly(dir, e, remoteBase(e)); err != nil {
			return toErrno(n.fsys.log, "setattr", err)
		}
		n.remember(e)
	}
	n.fsys.fillFileAttr(e, &out.Attr)
	return 0
}

// setAttrs applies a setattr's mode, owner and times to e, and reports
// whether any was set. The ctime becomes now.
func setAttrs(f *FS, e *cache.Entry, in *fuse.SetAttrIn) bool {
	changed := false
	if m, ok := in.GetMode(); ok {
		e.Mode = e.Type() | m&0o7777
		changed = true
	}
	uid, hasUID := in.GetUID()
	gid, hasGID := in.GetGID()
	if hasUID || hasGID {
		if !e.Owner {
			e.UID, e.GID = f.uid, f.gid
		}
		if hasUID {
			e.UID = uid
		}
		if hasGID {
			e.GID = gid
		}
		e.Owner, changed = true, true
	}
	if t, ok := in.GetMTime(); ok {
		e.MTime, changed = t, true
	}
	if t, ok := in.GetATime(); ok {
		e.ATime, changed = t, true
	}
	if changed {
		if e.MTime.IsZero() {
			e.MTime = f.start
		}
		if e.Mode == 0 {
			e.Mode = e.Type() | defaultPerm(e.Type())
		}
		e.CTime, e.Attrs = time.Now(), true
	}
	return changed
}

// putMetaOnly journals the upload of a symlink or special file described
// by e (a symlink's body: its target) and shows it. Called without locks.
func (f *FS) putMetaOnly(dir string, e cache.Entry, base journal.Base) error {
	key := f.fileKey(cache.JoinPath(dir, e.Name))
	staged, err := f.cfg.Journal.StagingFile()
	if err != nil {
		return fmt.Errorf("staging file: %w", err)
	}
	_, err = staged.WriteString(e.Target)
	if err == nil {
		err = staged.Sync()
	}
	if cerr := staged.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		removeQuietly(staged.Name())
		return fmt.Errorf("stage %q: %w", key, err)
	}
	e.Size = int64(len(e.Target))
	e.Local = true
	f.localMu.Lock()
	defer f.localMu.Unlock()
	op := journal.Op{Kind: journal.PutFile, Key: key, Staged: staged.Name(), Base: base, Meta: attrMeta(e)}
	if err := f.cfg.Journal.Commit(op); err != nil {
		return fmt.Errorf("journal %q: %w", key, err)
	}
	return f.cfg.Tree.PutEntry(dir, e)
}

var _ = (fs.NodeGetxattrer)((*metaNode)(nil))

func (n *metaNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	dir, e, _, _ := n.entry()
	return n.fsys.getxattr(cache.JoinPath(dir, e.Name), attr, dest, func() string {
		if _, pending := n.fsys.cfg.Journal.Pending(n.fsys.fileKey(cache.JoinPath(dir, e.Name))); pending {
			return stateDirty
		}
		return stateOnline
	})
}

// --- creating them ---

var _ = (fs.NodeSymlinker)((*dirNode)(nil))

func (n *dirNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if len(target) == 0 {
		return nil, syscall.ENOENT
	}
	if len(target) > maxSymlinkLen {
		return nil, syscall.ENAMETOOLONG
	}
	return n.createMetaOnly(ctx, "symlink", cache.Entry{Name: name, Mode: syscall.S_IFLNK | 0o777, Target: target}, out)
}

var _ = (fs.NodeMknoder)((*dirNode)(nil))

// Mknod makes FIFOs, sockets and devices: typed empty objects. (Regular
// files made with mknod come through Create.)
func (n *dirNode) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	e := cache.Entry{Name: name, Mode: mode & (syscall.S_IFMT | 0o7777)}
	switch mode & syscall.S_IFMT {
	case syscall.S_IFIFO, syscall.S_IFSOCK:
	case syscall.S_IFCHR, syscall.S_IFBLK:
		e.Rdev = dev
	case syscall.S_IFREG, 0:
		// A regular file made by mknod: empty, like a create and close.
		e.Mode = syscall.S_IFREG | mode&0o7777
		return n.createMetaOnly(ctx, "mknod", e, out)
	default:
		return nil, syscall.EINVAL
	}
	return n.createMetaOnly(ctx, "mknod", e, out)
}

// createMetaOnly makes a symlink or special file (or an empty regular
// file) e in the folder.
func (n *dirNode) createMetaOnly(ctx context.Context, op string, e cache.Entry, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ctx = uninterrupted(ctx)
	dir := n.path()
	key := n.fsys.fileKey(cache.JoinPath(dir, e.Name))
	if err := checkName(e.Name); err != nil {
		return nil, toErrno(n.fsys.log, op, err)
	}
	if err := n.checkNew(ctx, dir, key); err != nil {
		return nil, toErrno(n.fsys.log, op, err)
	}
	if _, ok, err := n.fsys.cfg.Tree.Lookup(dir, e.Name); err != nil {
		return nil, toErrno(n.fsys.log, op, err)
	} else if ok {
		return nil, syscall.EEXIST
	}
	now := time.Now()
	e.MTime, e.ATime, e.CTime, e.Attrs = now, now, now, true
	n.fsys.newOwner(caller(ctx), n.parentEntry(), &e)
	// A stale tombstone or a name the listing missed: If-None-Match
	// decides at upload time, and a clash becomes a conflicted copy.
	if err := n.fsys.putMetaOnly(dir, e, journal.Base{}); err != nil {
		return nil, toErrno(n.fsys.log, op, err)
	}
	n.fsys.localMu.Lock()
	n.fsys.touchDir(dir, now)
	n.fsys.localMu.Unlock()
	e.Size, e.Local = int64(len(e.Target)), true
	n.fsys.fillFileAttr(e, &out.Attr)
	if e.Type() == syscall.S_IFREG {
		return n.fsys.newChild(ctx, n.EmbeddedInode(), dir, e.Name, newFileNode(n.fsys, e), syscall.S_IFREG), 0
	}
	return n.fsys.newChild(ctx, n.EmbeddedInode(), dir, e.Name, &metaNode{fsys: n.fsys, last: e}, e.Type()), 0
}

// --- folders ---

var _ = (fs.NodeSetattrer)((*dirNode)(nil))

// Setattr changes a folder's mode, owner or times: its marker goes up
// again with them, and its parent's attribute index records them.
func (n *dirNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	ctx = uninterrupted(ctx)
	if _, ok := in.GetSize(); ok {
		return syscall.EISDIR
	}
	if err := n.fsys.writable(); err != nil {
		return toErrno(n.fsys.log, "setattr", err)
	}
	path, parent, e, err := n.entry()
	if err != nil {
		return toErrno(n.fsys.log, "setattr", err)
	}
	if !setAttrs(n.fsys, &e, in) {
		n.fsys.fillDirAttr(path, e, &out.Attr)
		return 0
	}
	if n.IsRoot() {
		n.fsys.rootMu.Lock()
		n.fsys.rootAttrs = e // the mount root has no marker
		n.fsys.rootMu.Unlock()
		n.fsys.fillDirAttr(path, e, &out.Attr)
		return 0
	}
	e.Local = true
	n.fsys.localMu.Lock()
	err = n.fsys.cfg.Journal.Commit(journal.Op{Kind: journal.PutMarker, Key: n.fsys.fileKey(path) + "/", Meta: attrMeta(e)})
	if err == nil {
		err = n.fsys.cfg.Tree.PutEntry(parent, e)
	}
	n.fsys.localMu.Unlock()
	if err != nil {
		return toErrno(n.fsys.log, "setattr", err)
	}
	n.fsys.fillDirAttr(path, e, &out.Attr)
	return 0
}

// parentEntry is the folder's own entry (for what its new children
// inherit).
func (n *dirNode) parentEntry() cache.Entry {
	_, _, e, err := n.entry()
	if err != nil {
		n.fsys.log.Debug("folder entry", "dir", n.path(), "err", err)
	}
	return e
}

// touchDir records that an entry of dir was made, removed or renamed at
// now: its mtime and ctime, in the tree and in its parent's attribute
// index. Called with f.localMu held.
func (f *FS) touchDir(dir string, now time.Time) {
	if dir == "" {
		f.rootMu.Lock()
		f.rootAttrs.MTime, f.rootAttrs.CTime = now, now
		f.rootMu.Unlock()
		return
	}
	parent, name := splitPath(dir)
	e, ok, err := f.cfg.Tree.Lookup(parent, name)
	if err != nil || !ok || !e.Dir {
		return
	}
	e.MTime, e.CTime, e.Attrs = now, now, true
	if e.Mode == 0 {
		e.Mode = syscall.S_IFDIR | 0o755
	}
	f.putEntry(parent, e)
	f.indexFolder(parent, e)
}

// renamed touches the folders a rename changed.
func (f *FS) renamed(srcDir, dstDir string) {
	now := time.Now()
	f.localMu.Lock()
	defer f.localMu.Unlock()
	f.touchDir(srcDir, now)
	if dstDir != srcDir {
		f.touchDir(dstDir, now)
	}
}

// caller is the process a FUSE request came from, nil when unknown.
func caller(ctx context.Context) *fuse.Caller {
	c, _ := fuse.FromContext(ctx)
	return c
}

// withMTime gives e an mtime, for metadata that needs one.
func withMTime(e cache.Entry) cache.Entry {
	if e.MTime.IsZero() {
		e.MTime = time.Now()
	}
	return e
}
