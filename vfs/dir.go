package vfs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/nimbus-fs/nimbus/cache"
)

// dirNode is a directory of the mount.
type dirNode struct {
	fs.Inode
	fsys *FS
}

// path is the node's slash-separated path below the mount root ("" = root).
func (n *dirNode) path() string { return n.Path(nil) }

var _ = (fs.NodeLookuper)((*dirNode)(nil))

func (n *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.fsys.inodes.touch(n)
	dir := n.path()
	// A name the store cannot hold, or one nimbus keeps for itself, gets
	// the errno that says why; a create of it then fails with it too.
	if err := checkName(name); err != nil {
		return nil, toErrno(n.fsys.log, "lookup", err)
	}
	if err := checkKey(n.fsys.fileKey(cache.JoinPath(dir, name))); err != nil {
		return nil, toErrno(n.fsys.log, "lookup", err)
	}
	// While dir is being listed, a name already listed is answered at once:
	// a READDIRPLUS looks up every entry it returns (dirstream.go).
	if e, ok, handled := n.fsys.streamedEntry(dir, name); handled {
		if !ok {
			return nil, syscall.ENOENT
		}
		return n.childInode(ctx, e, &out.Attr), 0
	}
	if err := n.fsys.ensureListed(ctx, dir); err != nil {
		return nil, toErrno(n.fsys.log, "lookup", err)
	}
	e, ok, err := n.fsys.cfg.Tree.Lookup(dir, name)
	if err != nil {
		return nil, toErrno(n.fsys.log, "lookup", err)
	}
	if !ok {
		return nil, syscall.ENOENT
	}
	return n.childInode(ctx, e, &out.Attr), 0
}

// childInode returns the inode for a known child, reusing the live one when
// the kernel still holds it (and it is of the same type), and fills its
// attributes.
func (n *dirNode) childInode(ctx context.Context, e cache.Entry, out *fuse.Attr) *fs.Inode {
	typ := e.Type()
	ch := n.GetChild(e.Name)
	if ch != nil && ch.StableAttr().Mode != typ {
		ch = nil // the name changed type: a new inode
	}
	switch {
	case e.Dir:
		n.fsys.fillDirAttr(cache.JoinPath(n.path(), e.Name), e, out)
		if ch != nil {
			return ch
		}
		return n.fsys.newChild(ctx, n.EmbeddedInode(), n.path(), e.Name, &dirNode{fsys: n.fsys}, syscall.S_IFDIR)
	case isMetaOnly(e):
		n.fsys.fillFileAttr(e, out)
		if ch != nil {
			if mn, ok := ch.Operations().(*metaNode); ok {
				mn.remember(e)
				return ch
			}
		}
		return n.fsys.newChild(ctx, n.EmbeddedInode(), n.path(), e.Name, &metaNode{fsys: n.fsys, last: e}, typ)
	}
	if ch != nil {
		if fn, ok := ch.Operations().(*fileNode); ok {
			fn.refresh(e, out)
			return ch
		}
	}
	n.fsys.fillFileAttr(e, out)
	return n.fsys.newChild(ctx, n.EmbeddedInode(), n.path(), e.Name, newFileNode(n.fsys, e), syscall.S_IFREG)
}

var _ = (fs.NodeReaddirer)((*dirNode)(nil))

func (n *dirNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	n.fsys.inodes.touch(n)
	dir := n.path()
	n.fsys.walked(dir)
	// A folder that must be listed first is read as its listing arrives.
	s, known, err := n.fsys.listingStream(dir)
	if err != nil {
		return nil, toErrno(n.fsys.log, "readdir", err)
	}
	if s != nil {
		return n.fsys.streamDir(ctx, n.EmbeddedInode(), dir, s, known)
	}
	return &treeDir{fsys: n.fsys, parent: n.EmbeddedInode(), dir: dir}, 0
}

// treeDirPage is how many entries a treeDir reads from the tree at once.
const treeDirPage = 512

// treeDir reads a listed folder from the tree a page at a time, so that a
// huge folder's first entries come at once (reading and decoding 100,000
// entries first took 0.4 s) and its entries are never all in memory. Each
// page is read after the last name shown: an entry added or removed
// meanwhile may or may not show, as POSIX allows, but no name shows twice
// and none that stays is missed.
type treeDir struct {
	fsys   *FS
	parent *fs.Inode // the folder's node: the entries' inode numbers are its children's
	dir    string

	page  []cache.Entry // read, not shown yet
	after string        // the last name read
	done  bool          // the tree has nothing after after
	off   uint64        // entries shown so far
	errno syscall.Errno // for Next, once: reading the tree failed
}

var _ = (fs.DirStream)((*treeDir)(nil))

func (d *treeDir) HasNext() bool {
	if len(d.page) == 0 && !d.done && d.errno == 0 {
		d.fill()
	}
	return len(d.page) > 0 || d.errno != 0
}

// fill reads the next page.
func (d *treeDir) fill() {
	d.page = d.page[:0]
	err := d.fsys.cfg.Tree.ChildrenAfter(d.dir, d.after, func(e cache.Entry) bool {
		d.page = append(d.page, e)
		return len(d.page) < treeDirPage
	})
	switch {
	case err != nil:
		d.errno, d.done = toErrno(d.fsys.log, "readdir", err), true
	case len(d.page) < treeDirPage:
		d.done = true
	}
	if len(d.page) > 0 {
		d.after = d.page[len(d.page)-1].Name
	}
}

func (d *treeDir) Next() (fuse.DirEntry, syscall.Errno) {
	if d.errno != 0 {
		errno := d.errno
		d.errno = 0
		return fuse.DirEntry{}, errno
	}
	e := d.page[0]
	d.page = d.page[1:]
	d.off++
	return fuse.DirEntry{Name: e.Name, Mode: e.Type(), Ino: d.fsys.inos.readdirIno(d.parent, d.dir, e.Name), Off: d.off}, 0
}

func (d *treeDir) Close() {}

var _ = (fs.FileSeekdirer)((*treeDir)(nil))

// Seekdir goes back to the entry after the off-th (rewinddir: 0), by
// reading again from the start.
func (d *treeDir) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.page, d.after, d.done, d.off, d.errno = nil, "", false, 0, 0
	return skipEntries(d, off)
}

var _ = (fs.NodeGetattrer)((*dirNode)(nil))

func (n *dirNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	path, _, e, err := n.entry()
	if err != nil {
		return toErrno(n.fsys.log, "getattr", err)
	}
	n.fsys.fillDirAttr(path, e, &out.Attr)
	return 0
}

// entry returns the folder's path, its parent's, and its entry there (the
// root's is kept in memory).
func (n *dirNode) entry() (path, parent string, e cache.Entry, err error) {
	name, p := n.Parent()
	if p == nil {
		if n.IsRoot() {
			return "", "", n.fsys.rootEntry(), nil
		}
		return "", "", cache.Entry{Name: name, Dir: true}, nil // removed while in use
	}
	parent = p.Path(nil)
	path = cache.JoinPath(parent, name)
	e, ok, err := n.fsys.cfg.Tree.Lookup(parent, name)
	if err != nil || !ok || !e.Dir {
		e = cache.Entry{Name: name, Dir: true}
	}
	return path, parent, e, err
}

var _ = (fs.NodeStatfser)((*dirNode)(nil))

// Statfs reports a large, mostly free file system: the bucket has no size.
func (n *dirNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	const bsize = 4096
	const total = 1 << 50 / bsize // 1 PiB
	out.Bsize = bsize
	out.Frsize = bsize
	out.Blocks = total
	out.Bfree = total
	out.Bavail = total
	out.Files = 1 << 40
	out.Ffree = 1 << 40
	out.NameLen = maxNameLen
	return 0
}

var _ = (fs.NodeGetxattrer)((*dirNode)(nil))

func (n *dirNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	rel := n.path()
	return n.fsys.getxattr(rel, attr, dest, func() string {
		if n.fsys.pinnedPath(rel) {
			return statePinned
		}
		return stateOnline
	})
}

var _ = (fs.NodeSetxattrer)((*dirNode)(nil))

func (n *dirNode) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return n.fsys.setxattr(ctx, n.path(), attr, data)
}

var _ = (fs.NodeListxattrer)((*dirNode)(nil))

func (n *dirNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return listxattr(dest)
}
