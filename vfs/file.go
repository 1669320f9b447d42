package vfs

import (
	"context"
	"errors"
	"io"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/cache"
)

// fileNode is a regular file of the mount.
type fileNode struct {
	fs.Inode
	fsys *FS

	mu sync.Mutex
	// entry is the last known state of the object. GUARDED_BY(mu)
	entry cache.Entry
	// openedETag is the ETag the kernel's page cache holds data of, from
	// the last open; a different ETag at open drops that cache. GUARDED_BY(mu)
	openedETag string
}

func newFileNode(fsys *FS, e cache.Entry) *fileNode {
	return &fileNode{fsys: fsys, entry: e}
}

func (n *fileNode) setEntry(e cache.Entry) {
	n.mu.Lock()
	n.entry = e
	n.mu.Unlock()
}

func (n *fileNode) getEntry() cache.Entry {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.entry
}

// location returns the file's parent directory path and its object key.
func (n *fileNode) location() (dir, name, key string) {
	name, parent := n.Parent()
	if parent == nil {
		return "", name, "" // unlinked: only open handles remain
	}
	dir = parent.Path(nil)
	return dir, name, n.fsys.fileKey(cache.JoinPath(dir, name))
}

func (n *fileNode) content() cache.Content {
	_, _, key := n.location()
	e := n.getEntry()
	return cache.Content{Key: key, ETag: e.ETag, Size: e.Size}
}

var _ = (fs.NodeGetattrer)((*fileNode)(nil))

// Getattr re-lists the parent directory when its listing is older than
// DirTTL, so that remote changes show in stat without a HEAD per file.
func (n *fileNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if h, ok := fh.(*fileHandle); ok {
		// An open handle describes the version it reads.
		n.fsys.fillFileAttr(cache.Entry{Size: h.content.Size, MTime: n.getEntry().MTime}, &out.Attr)
		return 0
	}
	dir, name, _ := n.location()
	if err := n.fsys.ensureListed(ctx, dir); err != nil {
		return toErrno(n.fsys.log, "getattr", err)
	}
	if e, ok, err := n.fsys.cfg.Tree.Lookup(dir, name); err != nil {
		return toErrno(n.fsys.log, "getattr", err)
	} else if ok && !e.Dir {
		n.setEntry(e)
	}
	n.fsys.fillFileAttr(n.getEntry(), &out.Attr)
	return 0
}

var _ = (fs.NodeOpener)((*fileNode)(nil))

func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	if err := n.revalidate(ctx); err != nil {
		return nil, 0, toErrno(n.fsys.log, "open", err)
	}
	c := n.content()
	var fuseFlags uint32
	n.mu.Lock()
	if n.openedETag == c.ETag {
		fuseFlags |= fuse.FOPEN_KEEP_CACHE
	}
	n.openedETag = c.ETag
	n.mu.Unlock()
	return &fileHandle{fsys: n.fsys, content: c, h: n.fsys.cfg.Blocks.Open(c)}, fuseFlags, 0
}

// revalidate asks the store for the object's current version (one HEAD),
// for close-to-open consistency. Offline, the known version is used.
func (n *fileNode) revalidate(ctx context.Context) error {
	if !n.fsys.online() {
		return nil
	}
	dir, name, key := n.location()
	if key == "" {
		return nil
	}
	info, err := n.fsys.cfg.Store.Stat(ctx, key)
	switch {
	case errors.Is(err, backend.ErrNotFound):
		if rmErr := n.fsys.cfg.Tree.RemoveEntry(dir, name); rmErr != nil {
			n.fsys.log.Warn("forget deleted file", "key", key, "err", rmErr)
		}
		n.fsys.cfg.Blocks.Forget(key, "")
		n.notifyGone(name)
		return err
	case errors.Is(err, backend.ErrOffline):
		return nil // serve the known version; reads of uncached blocks fail fast
	case err != nil:
		return err
	}
	old := n.getEntry()
	e := cache.Entry{Name: name, Size: info.Size, ETag: info.ETag, MTime: info.ModTime}
	if e.ETag == old.ETag && e.Size == old.Size && e.MTime.Equal(old.MTime) {
		return nil
	}
	n.setEntry(e)
	if err := n.fsys.cfg.Tree.PutEntry(dir, e); err != nil {
		return err
	}
	if old.ETag != e.ETag {
		n.fsys.cfg.Blocks.Forget(key, e.ETag)
	}
	return nil
}

// notifyGone tells the kernel to drop the entry, asynchronously: a Notify
// call from inside the operation that concerns it can deadlock.
func (n *fileNode) notifyGone(name string) {
	_, parent := n.Parent()
	if parent == nil {
		return
	}
	go func() {
		if errno := parent.NotifyEntry(name); errno != 0 && errno != syscall.ENOENT {
			n.fsys.log.Debug("notify entry", "name", name, "errno", errno)
		}
	}()
}

var _ = (fs.NodeGetxattrer)((*fileNode)(nil))

func (n *fileNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return n.fsys.getxattr(attr, dest, func() string {
		c := n.content()
		switch cached := n.fsys.cfg.Blocks.CachedBytes(c); {
		case cached >= c.Size:
			return stateLocal
		case cached > 0:
			return statePartial
		}
		return stateOnline
	})
}

var _ = (fs.NodeListxattrer)((*fileNode)(nil))

func (n *fileNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return listxattr(dest)
}

// fileHandle reads one version of a file through the block cache.
type fileHandle struct {
	fsys    *FS
	content cache.Content
	h       *cache.Handle
}

var _ = (fs.FileReader)((*fileHandle)(nil))

func (fh *fileHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= fh.content.Size {
		return fuse.ReadResultData(nil), 0
	}
	nread, err := fh.h.ReadAt(ctx, dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, toErrno(fh.fsys.log, "read", err)
	}
	return fuse.ReadResultData(dest[:nread]), 0
}

var _ = (fs.FileReleaser)((*fileHandle)(nil))

func (fh *fileHandle) Release(ctx context.Context) syscall.Errno {
	fh.h.Close()
	return 0
}
