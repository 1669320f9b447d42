package vfs

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/nimbus-fs/nimbus/cache"
)

// FUSE passthrough.
//
// A file opened read-only whose version (the one Open just validated) is
// entirely in the block cache is opened in passthrough: go-fuse registers
// the content's cache file with the kernel (FilePassthroughFder), and the
// kernel reads that file directly, so reads no longer cross into nimbus.
// The block store holds every block of the content (cache.HoldWhole)
// until the last passthrough handle of the file is released, so neither
// eviction nor Free nor a new version punches or removes what the kernel
// reads.
//
// The kernel allows a single backing file per inode, and no other kind of
// open while it has one: an open without passthrough of a file open in
// passthrough fails with EIO, and so does a passthrough open of a file
// open otherwise. So, per file:
//   - a read-only open goes to passthrough only when the file has no other
//     open handle, no working copy and no open on its way that will change
//     it; later read-only opens of the same version share the passthrough;
//   - an open that would change the file (for writing, a truncate, a
//     chmod: everything that makes a working copy), or a read-only open
//     that finds another version, waits for the passthrough handles to be
//     released, at most passthroughWait, then fails with ETXTBSY, as
//     writing to a running program does. The wait covers the common case
//     of a reader that closed just before: the kernel sends its RELEASE
//     asynchronously.
//
// Writes are never passed through: the journal needs the ranges a write
// changed (delta uploads send only those) and the working copy's size and
// mtime, which a write straight into a file would not report, so a file
// written through passthrough would have to be uploaded whole. Working
// copies, and files with a change not uploaded yet, are read through
// nimbus; once uploaded, a file's content is adopted into the cache and
// the next read-only open passes through.
//
// go-fuse's release of a backing file comes after the file handle's
// Release returns, so nimbus cannot tell from inside it that the kernel
// will not reuse the backing file for the next open of the inode. The
// mount therefore runs behind passthroughFS, a RawFileSystem wrapper that
// sees the end of go-fuse's Open (whether passthrough was granted) and of
// its Release (the backing file let go), matched to the handle by the
// request's cancel channel, which is the request's own while it runs.
// Only then does a file count as out of passthrough: a new version can
// never be served through the old version's backing file.
//
// Passthrough is on when the kernel offers it and a probe registration of
// a file of the cache folder succeeds (Linux 6.9 or later, CAP_SYS_ADMIN);
// otherwise, or if a registration fails later, reads go through nimbus and
// one debug line says why. PassthroughStatus reports the mode and why.
//
// Locking: a file's passthrough state is guarded by its fileNode.mu;
// passthroughState.mu is a leaf, taken under fileNode.mu.

// passthroughWait bounds how long an open that would change a file, or
// read another version of it, waits for its passthrough readers to close.
const passthroughWait = 2 * time.Second

// passthroughFlags are the open flags of a passthrough handle: its close
// has nothing to commit, so the kernel need not send a FLUSH.
const passthroughFlags = fuse.FOPEN_NOFLUSH

// errPassthroughBusy: a change, or another version, of a file that is
// open in passthrough mode.
var errPassthroughBusy = fmt.Errorf("file is open in passthrough mode (read straight from the cache): retry once its readers have closed it: %w", syscall.ETXTBSY)

// PassthroughStatus says whether reads of files entirely in the cache
// bypass nimbus, and how much they have.
type PassthroughStatus struct {
	On     bool   `json:"on"`
	Reason string `json:"reason,omitempty"` // why it is off
	Opens  int64  `json:"opens"`            // opens served in passthrough since the mount
	Open   int64  `json:"open"`             // passthrough handles open now
	Busy   int64  `json:"busy"`             // opens and changes refused with ETXTBSY
}

// passthroughState is the mount's passthrough mode and the handles that
// passthroughFS has still to settle.
type passthroughState struct {
	wrapped atomic.Bool // NodeFS made the wrapper: opens can be tracked

	mu      sync.Mutex
	on      bool                                   // GUARDED_BY(mu)
	reason  string                                 // GUARDED_BY(mu): why it is off
	opening map[<-chan struct{}]*passthroughHandle // GUARDED_BY(mu): Open returned, go-fuse's not yet
	closing map[<-chan struct{}]*passthroughHandle // GUARDED_BY(mu): Release returned, go-fuse's not yet

	opens, open, busy atomic.Int64
}

func (p *passthroughState) usable() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.on
}

func (p *passthroughState) set(on bool, reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.on, p.reason = on, reason
}

// track files ph under the request's cancel channel in m.
func (p *passthroughState) track(m *map[<-chan struct{}]*passthroughHandle, cancel <-chan struct{}, ph *passthroughHandle) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if *m == nil {
		*m = make(map[<-chan struct{}]*passthroughHandle)
	}
	(*m)[cancel] = ph
}

// take returns and forgets the handle filed under cancel in m, if any.
func (p *passthroughState) take(m *map[<-chan struct{}]*passthroughHandle, cancel <-chan struct{}) *passthroughHandle {
	p.mu.Lock()
	defer p.mu.Unlock()
	ph := (*m)[cancel]
	delete(*m, cancel)
	return ph
}

// requestCancel is the cancel channel of the FUSE request ctx belongs to;
// nil if ctx is not a request's.
func requestCancel(ctx context.Context) <-chan struct{} {
	if fc, ok := ctx.(*fuse.Context); ok {
		return fc.Cancel
	}
	return nil
}

// PassthroughStatus reports the passthrough mode.
func (f *FS) PassthroughStatus() PassthroughStatus {
	f.pt.mu.Lock()
	st := PassthroughStatus{On: f.pt.on, Reason: f.pt.reason}
	f.pt.mu.Unlock()
	if !st.On && st.Reason == "" {
		st.Reason = "not decided yet: the mount is starting"
	}
	st.Opens, st.Open, st.Busy = f.pt.opens.Load(), f.pt.open.Load(), f.pt.busy.Load()
	return st
}

// NodeFS returns the raw file system to mount: go-fuse's node file system
// of Root, behind the wrapper that passthrough needs.
func (f *FS) NodeFS(opts *fs.Options) fuse.RawFileSystem {
	f.pt.wrapped.Store(true)
	return &passthroughFS{RawFileSystem: fs.NewNodeFS(f.Root(), opts), pt: &f.pt}
}

// StartPassthrough decides, once mounted, whether reads go to passthrough:
// Config.Passthrough asks for it, the kernel offered it at INIT, and it
// accepts a file of dir (the cache folder) as a backing file.
func (f *FS) StartPassthrough(srv *fuse.Server, dir string) {
	on, reason := f.probePassthrough(srv, dir)
	f.pt.set(on, reason)
	if on {
		f.log.Debug("passthrough on: reads of files entirely in the cache bypass nimbus")
	} else {
		f.log.Debug("passthrough off: every read goes through nimbus", "reason", reason)
	}
}

func (f *FS) probePassthrough(srv *fuse.Server, dir string) (bool, string) {
	switch {
	case !f.cfg.Passthrough:
		return false, "not asked for (--passthrough turns it on)"
	case !f.pt.wrapped.Load():
		return false, "the mount was not made with NodeFS"
	case srv.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH == 0:
		return false, "the kernel does not offer FUSE passthrough (Linux 6.9 or later has it)"
	}
	probe, err := os.CreateTemp(dir, ".passthrough-probe-*")
	if err != nil {
		return false, fmt.Sprintf("no probe file in the cache folder: %v", err)
	}
	defer func() {
		closeQuietly(probe)
		removeQuietly(probe.Name())
	}()
	id, errno := srv.RegisterBackingFd(&fuse.BackingMap{Fd: int32(probe.Fd())})
	if errno != 0 {
		return false, fmt.Sprintf("the kernel refused a cache file as backing file: %v (passthrough needs CAP_SYS_ADMIN)", errno)
	}
	if errno := srv.UnregisterBackingFd(id); errno != 0 {
		f.log.Debug("unregister passthrough probe", "errno", errno)
	}
	return true, ""
}

// closeQuietly closes a file that was only read, or is about to be
// removed: nothing can be lost.
func closeQuietly(f *os.File) {
	_ = f.Close() // see above
}

// passthroughFS wraps go-fuse's node file system to see the outcome of
// Open and the end of Release (see the top of this file).
type passthroughFS struct {
	fuse.RawFileSystem
	pt *passthroughState
}

func (r *passthroughFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	st := r.RawFileSystem.Open(cancel, in, out)
	if ph := r.pt.take(&r.pt.opening, cancel); ph != nil {
		switch {
		case st != fuse.OK: // the kernel never got it: no Release will come
			ph.fileHandle.Release(context.Background())
			ph.released()
		default:
			ph.settle(out.OpenFlags&fuse.FOPEN_PASSTHROUGH != 0)
		}
	}
	return st
}

func (r *passthroughFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	r.RawFileSystem.Release(cancel, in)
	if ph := r.pt.take(&r.pt.closing, cancel); ph != nil {
		ph.released()
	}
}

// nodePassthrough is a file's passthrough state, guarded by its node's mu.
type nodePassthrough struct {
	open    int              // passthrough handles not yet released by go-fuse
	hold    *cache.WholeHold // the content they read, while open > 0
	idle    chan struct{}    // closed when open drops to 0
	holdOff int              // opens and changes under way that keep passthrough off
}

// passthroughHandle is a read-only handle opened in passthrough. It can
// read through nimbus too, as a fileHandle: the kernel sends reads only if
// it did not take the backing file.
type passthroughHandle struct {
	*fileHandle
	fd int // the held content's file, open while the handle is
	// refused: go-fuse could not register the backing file, so the
	// handle reads through nimbus. GUARDED_BY(node.mu)
	refused bool
}

var _ = (fs.FilePassthroughFder)((*passthroughHandle)(nil))

// PassthroughFd gives go-fuse the file to register, for the first
// passthrough open of the inode; later ones share the registration.
func (ph *passthroughHandle) PassthroughFd() (int, bool) { return ph.fd, true }

var _ = (fs.FileReleaser)((*passthroughHandle)(nil))

// Release lets the handle's reader go; the file stays in passthrough until
// go-fuse has let the backing file go too (passthroughFS.Release).
func (ph *passthroughHandle) Release(ctx context.Context) syscall.Errno {
	ph.fileHandle.Release(ctx)
	if cancel := requestCancel(ctx); cancel != nil && ph.fsys.pt.wrapped.Load() {
		ph.fsys.pt.track(&ph.fsys.pt.closing, cancel, ph)
	} else {
		ph.released()
	}
	return 0
}

// settle records whether go-fuse opened the handle in passthrough. If it
// did not, the registration failed and go-fuse will not try again: the
// handle counts as a plain reader, and passthrough is off for the mount.
func (ph *passthroughHandle) settle(granted bool) {
	if granted {
		ph.fsys.pt.opens.Add(1)
		return
	}
	n := ph.node
	n.mu.Lock()
	ph.refused = true
	ph.fileHandle.passthrough = false
	n.readers++
	n.mu.Unlock()
	n.passthroughDone()
	if ph.fsys.pt.usable() {
		ph.fsys.pt.set(false, "the kernel refused to register a cache file at an open")
		ph.fsys.log.Debug("passthrough off: the kernel refused a backing file; reads go through nimbus")
	}
}

// released ends the handle's passthrough, once go-fuse has let go.
func (ph *passthroughHandle) released() {
	n := ph.node
	n.mu.Lock()
	refused := ph.refused
	ph.refused = true // at most once
	n.mu.Unlock()
	if !refused {
		n.passthroughDone()
	}
}

// passthroughDone drops one passthrough handle of n; the last one gives
// the content back to the block store.
func (n *fileNode) passthroughDone() {
	n.fsys.pt.open.Add(-1)
	n.mu.Lock()
	n.pt.open--
	var hold *cache.WholeHold
	if n.pt.open == 0 {
		hold = n.pt.hold
		n.pt.hold = nil
		close(n.pt.idle)
		n.pt.idle = nil
	}
	n.mu.Unlock()
	if hold != nil {
		hold.Release()
	}
}

// openReader opens n read-only, in passthrough when it can (see the top
// of this file). A file in passthrough for another version is waited for.
func (n *fileNode) openReader(ctx context.Context) (fs.FileHandle, uint32, syscall.Errno) {
	timer := time.NewTimer(passthroughWait)
	defer timer.Stop()
	for {
		fh, flags, busy := n.tryOpenReader(ctx)
		if busy == nil {
			return fh, flags, 0
		}
		select {
		case <-busy:
		case <-timer.C:
			n.fsys.pt.busy.Add(1)
			return nil, 0, toErrno(n.fsys.log, "open", errPassthroughBusy)
		case <-ctx.Done():
			return nil, 0, toErrno(n.fsys.log, "open", ctx.Err())
		}
	}
}

// tryOpenReader opens n read-only, or returns the channel to wait on if
// n is open in passthrough for a version other than the one to read.
func (n *fileNode) tryOpenReader(ctx context.Context) (fs.FileHandle, uint32, chan struct{}) {
	c := n.content()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.pt.open > 0 {
		if n.work == nil && c == n.pt.hold.Content() {
			return n.passthroughHandleLocked(ctx, c), passthroughFlags, nil
		}
		return nil, 0, n.pt.idle
	}
	if n.work != nil || n.adoptPendingLocked() {
		n.openedETag = ""
		n.readers++
		return &fileHandle{fsys: n.fsys, node: n}, 0, nil // reads the local content
	}
	var fuseFlags uint32
	if n.openedETag == c.ETag {
		fuseFlags |= fuse.FOPEN_KEEP_CACHE
	}
	n.openedETag = c.ETag
	if n.passthroughAllowedLocked(ctx, c) {
		if hold, err := n.fsys.cfg.Blocks.HoldWhole(c); err == nil {
			n.pt.hold, n.pt.idle = hold, make(chan struct{})
			return n.passthroughHandleLocked(ctx, c), passthroughFlags, nil
		}
	}
	n.readers++
	return &fileHandle{fsys: n.fsys, node: n, content: c, h: n.fsys.cfg.Blocks.Open(c)}, fuseFlags, nil // reads this version
}

// passthroughAllowedLocked reports whether an open of c may start
// passthrough for n: no other handle is open (the kernel refuses to mix
// modes) and nothing is about to change n.
func (n *fileNode) passthroughAllowedLocked(ctx context.Context, c cache.Content) bool {
	return c.Size > 0 && n.writers == 0 && n.readers == 0 && n.pt.holdOff == 0 &&
		requestCancel(ctx) != nil && n.fsys.pt.wrapped.Load() && n.fsys.pt.usable()
}

// passthroughHandleLocked makes a passthrough handle of c, which n holds
// whole, and files it for passthroughFS to settle.
func (n *fileNode) passthroughHandleLocked(ctx context.Context, c cache.Content) *passthroughHandle {
	n.pt.open++
	n.fsys.pt.open.Add(1)
	ph := &passthroughHandle{
		fileHandle: &fileHandle{fsys: n.fsys, node: n, content: c, h: n.fsys.cfg.Blocks.Open(c), passthrough: true},
		fd:         int(n.pt.hold.File().Fd()),
	}
	n.fsys.pt.track(&n.fsys.pt.opening, requestCancel(ctx), ph)
	return ph
}

// holdOffPassthrough waits until n has no passthrough handle (at most
// passthroughWait), then keeps new ones from starting until done is
// called: the caller is about to change n, which passthrough readers
// would not see, or open it in a mode the kernel will not mix with them.
func (n *fileNode) holdOffPassthrough(ctx context.Context) (done func(), err error) {
	timer := time.NewTimer(passthroughWait)
	defer timer.Stop()
	n.mu.Lock()
	for n.pt.open > 0 {
		idle := n.pt.idle
		n.mu.Unlock()
		select {
		case <-idle:
		case <-timer.C:
			n.fsys.pt.busy.Add(1)
			return nil, errPassthroughBusy
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		n.mu.Lock()
	}
	n.pt.holdOff++
	n.mu.Unlock()
	return func() {
		n.mu.Lock()
		n.pt.holdOff--
		n.mu.Unlock()
	}, nil
}

// readerOf returns the fileHandle behind a read handle of either kind.
func readerOf(fh fs.FileHandle) (*fileHandle, bool) {
	switch h := fh.(type) {
	case *fileHandle:
		return h, true
	case *passthroughHandle:
		return h.fileHandle, true
	}
	return nil, false
}
