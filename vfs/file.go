package vfs

import (
	"context"
	"errors"
	"io"
	"math"
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
	// unclosed counts the writable handles not closed yet (no Flush): a
	// close will journal their changes. The kernel releases a closed
	// handle later, asynchronously, so writers may still count it.
	// GUARDED_BY(mu)
	unclosed int
	// mode and mtime set locally (0 and zero: from the store); mode holds
	// S_IFREG, so that mode 0 is set. GUARDED_BY(mu)
	mode  uint32
	mtime time.Time
	// The other attributes set locally (see attrs.go). GUARDED_BY(mu)
	owned        bool // uid and gid are set
	uid, gid     uint32
	atime, ctime time.Time
	// ownETag is the ETag of this machine's last upload of the file: a
	// version that changed to it needs no conflict. GUARDED_BY(mu)
	ownETag string
	// movedTo is the new key of a file a folder rename moved, until the
	// copy there completes (FS.moving). GUARDED_BY(mu)
	movedTo string
	// readers counts open read-only handles that read through nimbus, pt
	// the passthrough ones (passthrough.go). GUARDED_BY(mu)
	readers int
	pt      nodePassthrough
}

func newFileNode(fsys *FS, e cache.Entry) *fileNode {
	return &fileNode{fsys: fsys, entry: e}
}

func (n *fileNode) setEntry(e cache.Entry) {
	n.mu.Lock()
	n.entry = e
	n.mu.Unlock()
}

// refresh gives the live node the entry a listing or lookup found, unless
// it has local content, which is newer until uploaded, and describes the
// file as this machine sees it.
func (n *fileNode) refresh(e cache.Entry, out *fuse.Attr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.work == nil && !n.entry.Local {
		n.entry = e
	}
	n.fillAttrLocked(out)
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

// content is the store's version of the file that reads should see. A file
// renamed locally whose server-side copy is still pending is read from its
// source: same bytes, and its cached blocks (offline too). A file renamed
// twice before the first copy is done reads the first source.
func (n *fileNode) content() cache.Content {
	_, _, key := n.location()
	e := n.getEntry()
	// Any op at first; then the op on a source before the copy from it.
	k, before := key, uint64(math.MaxUint64)
	for range 16 { // rename chains are short; the bound guards against a cycle
		p, ok := n.fsys.cfg.Journal.PendingBefore(k, before)
		if !ok || p.Kind != journal.Copy {
			break
		}
		if !p.SrcChained {
			return cache.Content{Key: p.Src, ETag: p.SrcETag, Size: e.Size}
		}
		// Its version is the one the op on Src before it leaves.
		k, before = p.Src, p.Seq
	}
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
	if h, ok := readerOf(fh); ok && !h.writable {
		h.mu.Lock()
		size, opened := h.content.Size, h.h != nil
		h.mu.Unlock()
		if opened {
			// An open handle describes the version it reads.
			n.mu.Lock()
			e := n.attrsLocked()
			n.mu.Unlock()
			e.Size = size
			n.fsys.fillFileAttr(e, &out.Attr)
			if _, _, key := n.location(); key == "" {
				out.Nlink = 0 // unlinked, still open
			}
			return 0
		}
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
		ctx = uninterrupted(ctx)
		if err := n.fsys.writable(); err != nil {
			return nil, 0, toErrno(n.fsys.log, "open", err)
		}
		// The kernel takes no other open of a file open in passthrough.
		done, err := n.holdOffPassthrough(ctx)
		if err != nil {
			return nil, 0, toErrno(n.fsys.log, "open", err)
		}
		defer done()
	}
	if err := n.revalidate(ctx); err != nil {
		return nil, 0, toErrno(n.fsys.log, "open", err)
	}
	if !write {
		return n.openReader(ctx) // passthrough.go
	}
	if flags&syscall.O_TRUNC != 0 {
		// The kernel sends O_TRUNC as a separate truncate to 0, which
		// needs no download.
		if err := n.lockWork(ctx, true, false); err != nil {
			return nil, 0, toErrno(n.fsys.log, "open", err)
		}
	} else {
		n.mu.Lock()
		// Reads through this handle see a pending change; the first
		// write copies it (copy on write).
		if n.work == nil && !n.adoptPendingLocked() {
			n.mu.Unlock()
			n.keepOpenedVersion(ctx)
			n.mu.Lock()
		}
	}
	defer n.mu.Unlock()
	if flags&syscall.O_TRUNC != 0 && n.work.size > 0 {
		w, err := n.forWritingLocked()
		if err == nil {
			err = w.f.Truncate(0)
		}
		if err != nil {
			return nil, 0, toErrno(n.fsys.log, "open", err)
		}
		n.streamTruncatedLocked(w, 0) // stream.go
		w.size, w.dirty = 0, true
		w.changes.truncate(0)
		n.fsys.truncated(w, 0)
		n.mtime = time.Now()
	}
	n.writers++
	n.unclosed++
	n.openedETag = ""
	return &fileHandle{fsys: n.fsys, node: n, writable: true, appends: flags&syscall.O_APPEND != 0}, 0, 0
}

// keepOpenedVersion makes the working copy of the version n has now, at an
// open with write access: a write through this handle edits the version
// the file had when it was opened, even if another client replaces it
// before that write (the upload's condition then fails, and the edit
// becomes a conflicted copy). A cached or small file is copied (a small
// uncached one is fetched); a large uncached one is snapshotted
// server-side, with nothing downloaded. If that fails (offline, say), the
// first write makes the copy, as it would have. A copy that no write used
// goes at the last release (dropUnusedWorkLocked).
func (n *fileNode) keepOpenedVersion(ctx context.Context) {
	if err := n.ensureWork(ctx, false); err != nil {
		_, _, key := n.location()
		n.fsys.log.Debug("open for writing: working copy left to the first write", "key", key, "err", err)
	}
}

// dropUnusedWorkLocked drops a working copy that nothing wrote to once no
// handle may write to it any more, so that later opens read the store's
// version again. An unlinked file's copy stays while a handle reads it:
// the store's version is deleted (see dirNode.Unlink). Called with n.mu
// held.
func (n *fileNode) dropUnusedWorkLocked() {
	w := n.work
	if w == nil || w.dirty || w.committed || n.writers > 0 {
		return
	}
	if _, _, key := n.location(); key == "" && n.readers > 0 {
		return
	}
	w.close() // releases a partial copy's snapshot for the sweep
	removeQuietly(w.f.Name())
	n.work = nil
}

// adoptPendingLocked gives n, which has no working copy, the content of a
// committed change the journal has not uploaded yet, as a committed working
// copy: a node made afresh (the kernel forgot the old one) must read what
// was written, not the store's older version or none. It reports whether
// there was such content. Called with n.mu held.
func (n *fileNode) adoptPendingLocked() bool {
	_, _, key := n.location()
	staged, size, part, ok := n.fsys.pendingContent(key)
	if !ok {
		return false
	}
	f, err := os.Open(staged)
	if err != nil {
		return false // uploaded meanwhile: read the store's version
	}
	n.work = &workFile{f: f, size: size, committed: true, base: remoteBase(n.entry), partial: n.fsys.holding(part)}
	return true
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
	if _, pending := n.fsys.cfg.Journal.Pending(key); pending {
		return nil // a local change of it is queued: it wins
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
	attrsFromMeta(info.Meta, &e)
	if e.ETag == old.ETag && e.Size == old.Size && e.MTime.Equal(old.MTime) && e.Mode == old.Mode {
		return nil
	}
	n.setEntry(e)
	if err := n.fsys.cfg.Tree.PutEntry(dir, e); err != nil {
		return err
	}
	if old.ETag != e.ETag {
		n.fsys.cfg.Blocks.Forget(key, e.ETag)
	}
	// The kernel's attributes (the size above all) may be up to
	// AttrTimeout old: it would cut reads of a longer new version at the
	// old size. Only they are dropped (offset -1); the open's reply drops
	// the page cache. Safe inside Open: no lock the kernel holds for an
	// open is one the invalidation takes.
	if errno := n.NotifyContent(-1, 0); errno != 0 && errno != syscall.ENOENT {
		n.fsys.log.Debug("notify attributes", "key", key, "errno", errno)
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
	n.fsys.background(func() {
		if errno := parent.NotifyEntry(name); errno != 0 && errno != syscall.ENOENT {
			n.fsys.log.Debug("notify entry", "name", name, "errno", errno)
		}
	})
}

var _ = (fs.NodeGetxattrer)((*fileNode)(nil))

func (n *fileNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	dir, name, key := n.location()
	return n.fsys.getxattr(cache.JoinPath(dir, name), attr, dest, func() string { return n.state(dir, name, key) })
}

// state is the user.nimbus.state of the file.
func (n *fileNode) state(dir, name, key string) string {
	n.mu.Lock()
	dirty := n.work != nil && n.work.dirty
	n.mu.Unlock()
	if dirty {
		return stateDirty
	}
	if p, ok := n.fsys.cfg.Journal.Pending(key); ok {
		if p.Uploading {
			return stateUploading
		}
		return stateDirty
	}
	if n.fsys.cfg.Journal.IsConflictCopy(key) {
		return stateConflict
	}
	c := n.content()
	switch cached := n.fsys.cfg.Blocks.CachedBytes(c); {
	case cached >= c.Size:
		if n.fsys.pinnedPath(cache.JoinPath(dir, name)) {
			return statePinned
		}
		return stateLocal
	case cached > 0:
		return statePartial
	}
	return stateOnline
}

var _ = (fs.NodeSetxattrer)((*fileNode)(nil))

func (n *fileNode) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	dir, name, _ := n.location()
	return n.fsys.setxattr(ctx, cache.JoinPath(dir, name), attr, data)
}

var _ = (fs.NodeListxattrer)((*fileNode)(nil))

func (n *fileNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return listxattr(dest)
}

// fileHandle is an open file: it reads the node's local content while it
// has any, else a version of the object through the block cache.
type fileHandle struct {
	fsys     *FS
	node     *fileNode
	writable bool
	// appends: opened with O_APPEND. Every write goes to the end of the
	// working copy, whatever offset the kernel computed: it computes it
	// from the size it cached, which another mount's upload, seen by a
	// revalidation or a poll, may have made stale.
	appends bool
	// closed: a writable handle had its first Flush. GUARDED_BY(node.mu)
	closed bool
	// passthrough: the handle is a passthroughHandle's, counted in
	// node.pt rather than node.readers. GUARDED_BY(node.mu)
	passthrough bool

	mu sync.Mutex
	// content and h: the store's version this handle reads, opened at the
	// first read without local content. GUARDED_BY(mu)
	content cache.Content
	h       *cache.Handle
}

// blocks returns the handle's block reader, opening it on first use.
func (fh *fileHandle) blocks() (*cache.Handle, cache.Content) {
	fh.mu.Lock()
	defer fh.mu.Unlock()
	if fh.h == nil {
		fh.content = fh.node.content()
		fh.h = fh.fsys.cfg.Blocks.Open(fh.content)
	}
	return fh.h, fh.content
}

var _ = (fs.FileReader)((*fileHandle)(nil))

func (fh *fileHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if res, ok, errno := fh.readLocal(ctx, dest, off); ok {
		return res, errno
	}
	for attempt := 1; ; attempt++ {
		h, c := fh.blocks()
		if off >= c.Size {
			return fuse.ReadResultData(nil), 0
		}
		nread, err := h.ReadAt(ctx, dest, off)
		if err == nil || errors.Is(err, io.EOF) {
			return fuse.ReadResultData(dest[:nread]), 0
		}
		if attempt >= maxResolve || !isGone(err) || !fh.follow(c) {
			return nil, toErrno(fh.fsys.log, "read", err)
		}
	}
}

// follow moves a handle that read c to where the same bytes are now, after
// reading c failed because it is gone: a renamed file's server-side copy
// completed and its source was deleted. A version replaced by a different
// one is not followed: the handle keeps failing rather than mix versions.
// It reports whether the handle moved.
func (fh *fileHandle) follow(c cache.Content) bool {
	now := fh.node.content()
	if now.Key == c.Key {
		return false
	}
	fh.mu.Lock()
	defer fh.mu.Unlock()
	if fh.content != c {
		return true // moved meanwhile by another read
	}
	fh.h.Close()
	fh.content, fh.h = now, fh.fsys.cfg.Blocks.Open(now)
	return true
}

// readLocal reads the node's working copy, if it has one (ok). What a
// partial one lacks is read from the store, under the node's lock: a write
// cannot change those bytes meanwhile.
func (fh *fileHandle) readLocal(ctx context.Context, dest []byte, off int64) (res fuse.ReadResult, ok bool, errno syscall.Errno) {
	n := fh.node
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.work == nil {
		return nil, false, 0
	}
	if off >= n.work.size {
		return fuse.ReadResultData(nil), true, 0
	}
	if rest := n.work.size - off; int64(len(dest)) > rest {
		dest = dest[:rest]
	}
	nread, err := n.work.f.ReadAt(dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, true, toErrno(fh.fsys.log, "read", err)
	}
	if p := n.work.partial; p != nil {
		if err := p.read(ctx, fh.fsys.cfg.Blocks, dest[:nread], off); err != nil {
			return nil, true, toErrno(fh.fsys.log, "read", err)
		}
	}
	return fuse.ReadResultData(dest[:nread]), true, 0
}

// markClosedLocked records the close of a writable handle. Called with
// fh.node.mu held.
func (fh *fileHandle) markClosedLocked() {
	if fh.writable && !fh.closed {
		fh.closed = true
		fh.node.unclosed--
	}
}

var _ = (fs.FileReleaser)((*fileHandle)(nil))

func (fh *fileHandle) Release(ctx context.Context) syscall.Errno {
	fh.mu.Lock()
	if fh.h != nil {
		fh.h.Close()
	}
	fh.mu.Unlock()
	n := fh.node
	n.mu.Lock()
	switch {
	case fh.writable:
		n.writers--
		fh.markClosedLocked()
		n.dropUnusedWorkLocked()
	case !fh.passthrough:
		n.readers--
		if _, _, key := n.location(); key == "" {
			// The copy an unlink kept for its readers (see
			// dirNode.Unlink); a linked file's unused copy goes only with
			// its writers, as other readers may be reading it.
			n.dropUnusedWorkLocked()
		}
	}
	n.mu.Unlock()
	return 0
}
