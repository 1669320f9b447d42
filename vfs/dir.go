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
	// A folder that must be listed first is read as its listing arrives.
	s, known, err := n.fsys.listingStream(dir)
	if err != nil {
		return nil, toErrno(n.fsys.log, "readdir", err)
	}
	if s != nil {
		return n.fsys.streamDir(ctx, n.EmbeddedInode(), dir, s, known)
	}
	var list []fuse.DirEntry
	err = n.fsys.cfg.Tree.Children(dir, func(e cache.Entry) bool {
		list = append(list, fuse.DirEntry{Name: e.Name, Mode: e.Type(), Ino: n.fsys.inos.readdirIno(n.EmbeddedInode(), dir, e.Name)})
		return true
	})
	if err != nil {
		return nil, toErrno(n.fsys.log, "readdir", err)
	}
	return fs.NewListDirStream(list), 0
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
