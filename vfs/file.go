package vfs

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
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
	// work is the local content, when the file has any. GUARDED_BY(mu)
	work *workFile
	// writers counts open writable handles. GUARDED_BY(mu)
	writers int
	// mode and mtime set locally (0 and zero: from the store). GUARDED_BY(mu)
	mode  uint32
	mtime time.Time
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
	n.mu.Lock()
	local := n.work != nil || n.entry.Local
	if local {
		n.fillAttrLocked(&out.Attr)
	}
	n.mu.Unlock()
	if local {
		return 0
	}
	if h, ok := fh.(*fileHandle); ok && h.h != nil {
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
	n.mu.Lock()
	n.fillAttrLocked(&out.Attr)
	n.mu.Unlock()
	return 0
}

var _ = (fs.NodeOpener)((*fileNode)(nil))

func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	write := flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0
	if write {
		if err := n.fsys.writable(); err != nil {
			return nil, 0, toErrno(n.fsys.log, "open", err)
		}
	}
	if err := n.revalidate(ctx); err != nil {
		return nil, 0, toErrno(n.fsys.log, "open", err)
	}
	if !write {
		if fh, ok := n.openLocal(); ok {
			return fh, 0, 0
		}
		c := n.content()
		var fuseFlags uint32
		n.mu.Lock()
		if n.openedETag == c.ETag {
			fuseFlags |= fuse.FOPEN_KEEP_CACHE
		}
		n.openedETag = c.ETag
		n.mu.Unlock()
		return &fileHandle{fsys: n.fsys, node: n, content: c, h: n.fsys.cfg.Blocks.Open(c)}, fuseFlags, 0
	}
	trunc := flags&syscall.O_TRUNC != 0
	if err := n.ensureWork(ctx, trunc); err != nil {
		return nil, 0, toErrno(n.fsys.log, "open", err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if trunc && n.work.size > 0 {
		w, err := n.forWritingLocked()
		if err == nil {
			err = w.f.Truncate(0)
		}
		if err != nil {
			return nil, 0, toErrno(n.fsys.log, "open", err)
		}
		w.size, w.dirty = 0, true
		n.mtime = time.Now()
	}
	n.writers++
	n.openedETag = ""
	return &fileHandle{fsys: n.fsys, node: n, writable: true}, 0, 0
}

// openLocal opens a reader of the local content, if the file has any: a
// working copy, or a committed change the journal has not uploaded yet.
func (n *fileNode) openLocal() (*fileHandle, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.work != nil {
		n.openedETag = ""
		return &fileHandle{fsys: n.fsys, node: n}, true
	}
	_, _, key := n.location()
	p, ok := n.fsys.cfg.Journal.Pending(key)
	if !ok || p.Kind != journal.PutFile {
		return nil, false
	}
	f, err := os.Open(p.Staged)
	if err != nil {
		return nil, false // uploaded meanwhile: read the store's version
	}
	n.work = &workFile{f: f, size: p.Size, committed: true, base: remoteBase(n.entry)}
	n.openedETag = ""
	return &fileHandle{fsys: n.fsys, node: n}, true
}

// revalidate asks the store for the object's current version (one HEAD),
// for close-to-open consistency. Offline, the known version is used.
func (n *fileNode) revalidate(ctx context.Context) error {
	n.mu.Lock()
	local := n.work != nil || n.entry.Local
	n.mu.Unlock()
	if local || !n.fsys.online() {
		return nil // local changes win until uploaded
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

// fileHandle is an open file: it reads the node's local content when it has
// any, else one version of the object through the block cache.
type fileHandle struct {
	fsys     *FS
	node     *fileNode
	writable bool
	// content and h: the store's version this handle reads (nil h: the
	// node's local content).
	content cache.Content
	h       *cache.Handle
}

var _ = (fs.FileReader)((*fileHandle)(nil))

func (fh *fileHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if fh.h == nil {
		return fh.readLocal(dest, off)
	}
	if off >= fh.content.Size {
		return fuse.ReadResultData(nil), 0
	}
	nread, err := fh.h.ReadAt(ctx, dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, toErrno(fh.fsys.log, "read", err)
	}
	return fuse.ReadResultData(dest[:nread]), 0
}

func (fh *fileHandle) readLocal(dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n := fh.node
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.work == nil {
		return nil, syscall.EIO // cannot happen: local handles keep work alive
	}
	if off >= n.work.size {
		return fuse.ReadResultData(nil), 0
	}
	if rest := n.work.size - off; int64(len(dest)) > rest {
		dest = dest[:rest]
	}
	nread, err := n.work.f.ReadAt(dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, toErrno(fh.fsys.log, "read", err)
	}
	return fuse.ReadResultData(dest[:nread]), 0
}

var _ = (fs.FileReleaser)((*fileHandle)(nil))

func (fh *fileHandle) Release(ctx context.Context) syscall.Errno {
	if fh.h != nil {
		fh.h.Close()
	}
	if fh.writable {
		n := fh.node
		n.mu.Lock()
		n.writers--
		n.mu.Unlock()
	}
	return 0
}
