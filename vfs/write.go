package vfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/trash"
	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// The write path.
//
// A file with local content has a working copy (workFile): a file in the
// journal's staging folder holding the whole content. Writes and truncates
// go to it; reads come from it. Flush (every close) and Fsync commit it to
// the journal when it changed: the journal fsyncs it and records the upload
// in bbolt before the call returns, and from then on owns the file. A later
// write copies it first (copy on write), so the bytes being uploaded never
// change underneath the uploader.
//
// The tree shows local changes at once, as Local entries that listings do
// not override, and local deletes as tombstones, until the journal reports
// the upload done (FS.applied).

// journalLog is what the vfs needs from the journal.
type journalLog interface {
	StagingFile() (*os.File, error)
	Commit(ops ...journal.Op) error
	Pending(key string) (journal.PendingOp, bool)
	PendingBefore(key string, seq uint64) (journal.PendingOp, bool)
	PendingUnder(prefix string) []journal.PendingOp
	IsConflictCopy(key string) bool
}

// workFile is the local content of a file.
type workFile struct {
	f    *os.File
	size int64
	// dirty: written since the last commit.
	dirty bool
	// committed: the journal owns f's path; copy before writing again.
	committed bool
	// base is the remote version the edit chain began from.
	base journal.Base
	// changes are the bytes that may differ from base's content.
	changes changes
	// partial, when set, says which bytes the file lacks and where they
	// are (partial.go).
	partial *partial
}

func (w *workFile) close() {
	if w.partial != nil {
		w.partial.drop()
	}
	if err := w.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		// Read-only use or content already committed: nothing is lost.
		_ = err
	}
}

// uninterrupted detaches a change from the kernel's interrupts. The kernel
// interrupts a request when its caller gets any signal, and Go programs get
// SIGURG all the time (goroutine preemption); an abandoned change would
// fail with EINTR, which few programs retry, possibly halfway (a listing
// done, nothing journaled). A fatal signal still ends the caller's wait in
// the kernel, and an unreachable store fails fast (backend/health).
func uninterrupted(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }

// errReadOnly is returned for changes to a --read-only mount.
var errReadOnly = fmt.Errorf("read-only mount: %w", syscall.EROFS)

func (f *FS) writable() error {
	if f.cfg.ReadOnly || f.cfg.Journal == nil {
		return errReadOnly
	}
	return nil
}

// newWorkFile makes a working copy holding size bytes read from src (nil:
// empty). When src is partial (p), so is the copy: it copies what src holds.
func (f *FS) newWorkFile(ctx context.Context, src io.ReaderAt, size int64, base journal.Base, p *partial) (*workFile, error) {
	file, err := f.cfg.Journal.StagingFile()
	if err != nil {
		return nil, fmt.Errorf("staging file: %w", err)
	}
	w := &workFile{f: file, base: base}
	if src != nil && size > 0 {
		n, err := copyHeld(file, src, size, p)
		if err != nil {
			w.close()
			removeQuietly(file.Name())
			return nil, fmt.Errorf("copy content to the working file: %w", err)
		}
		if ctx.Err() != nil {
			w.close()
			removeQuietly(file.Name())
			return nil, ctx.Err()
		}
		w.size = n
		w.partial = f.holding(p)
	}
	return w, nil
}

func removeQuietly(path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		// A leftover staging file is removed by the journal at next open.
		_ = err
	}
}

// pendingContent finds the staged file holding the newest content of key
// when the store does not have it yet: a pending upload of key, or of the
// source of a pending copy to key (a file renamed before its upload ended).
// part is what the staged file lacks, if anything.
func (f *FS) pendingContent(key string) (staged string, size int64, part *partial, ok bool) {
	// Any op at first; then the op on a source before the copy from it.
	before := uint64(math.MaxUint64)
	for range 16 { // rename chains are short; the bound guards against a cycle
		p, pending := f.cfg.Journal.PendingBefore(key, before)
		switch {
		case !pending:
			return "", 0, nil, false
		case p.Kind == journal.PutFile:
			return p.Staged, p.Size, f.fromJournal(p.Partial), true
		case p.Kind == journal.Copy && p.SrcChained:
			// The source's content is what its op before the copy
			// leaves (the rename's own delete of it comes after).
			key, before = p.Src, p.Seq
		default:
			return "", 0, nil, false
		}
	}
	return "", 0, nil, false
}

// blockReaderAt reads a remote version through the block cache.
type blockReaderAt struct {
	ctx context.Context
	h   *cache.Handle
}

func (r blockReaderAt) ReadAt(p []byte, off int64) (int, error) { return r.h.ReadAt(r.ctx, p, off) }

// remoteBase is the condition for an edit of entry e.
func remoteBase(e cache.Entry) journal.Base {
	if e.ETag == "" {
		return journal.Base{}
	}
	return journal.Base{Exists: true, ETag: e.ETag}
}

// ensureWork gives n a working copy, fetching the current content unless
// truncate says it is not needed. It must not be called with n.mu held: the
// content may come from the network.
func (n *fileNode) ensureWork(ctx context.Context, truncate bool) error {
	n.mu.Lock()
	if n.work != nil {
		n.mu.Unlock()
		return nil
	}
	n.mu.Unlock()

	var w *workFile
	var e cache.Entry
	for attempt := 1; ; attempt++ {
		var src source
		var err error
		w, e, src, err = n.copyContent(ctx, truncate)
		if err == nil {
			break
		}
		// The content can move while it is copied: an upload finishes and
		// its staged file goes, a renamed file's copy completes and its
		// source is deleted. Then it is found again where it went.
		if attempt >= maxResolve || !isGone(err) || n.source().place == src.place {
			return err
		}
		time.Sleep(time.Duration(attempt) * time.Millisecond) // the journal is mid-step
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.work != nil { // another open won the race
		w.close()
		removeQuietly(w.f.Name())
		return nil
	}
	if n.entry.ETag != e.ETag && n.entry.ETag == n.ownETag {
		// Our own upload finished while the content was fetched: the
		// edit is based on it (same bytes), not on the version before.
		w.base = remoteBase(n.entry)
		w.changes.forget()
	}
	n.work = w
	return nil
}

// maxResolve bounds how often a read follows content that moved.
const maxResolve = 8

// isGone reports whether err says the content read was not where it was
// looked for.
func isGone(err error) bool {
	return errors.Is(err, backend.ErrNotFound) || errors.Is(err, os.ErrNotExist) || errors.Is(err, backend.ErrPrecondition)
}

// source is where a file's current content is: a staged file of the
// journal (its path and size, and what it lacks), else a version of an
// object. Two sources of equal place hold the same bytes.
type source struct {
	place
	part *partial
}

type place struct {
	staged string
	size   int64
	object cache.Content
}

// source finds where n's current content is.
func (n *fileNode) source() source {
	_, _, key := n.location()
	if staged, size, part, ok := n.fsys.pendingContent(key); ok {
		return source{place: place{staged: staged, size: size}, part: part}
	}
	return source{place: place{object: n.content()}} // a pending rename reads its source
}

// copyContent makes a new working copy of n's current content (an empty
// one when truncate is set). It returns the entry the copy was based on and
// the source it read.
func (n *fileNode) copyContent(ctx context.Context, truncate bool) (w *workFile, e cache.Entry, src source, err error) {
	e = n.getEntry()
	if truncate {
		w, err = n.fsys.newWorkFile(ctx, nil, 0, remoteBase(e), nil)
		return w, e, src, err
	}
	src = n.source()
	_, _, key := n.location()
	if src.staged != "" {
		// Content committed but not uploaded yet: start from it. The
		// journal removes it once uploaded, after Applied has recorded
		// the new version: then that is read from the store.
		sf, err := os.Open(src.staged)
		if err == nil {
			defer sf.Close()
			w, err = n.fsys.newWorkFile(ctx, sf, src.size, remoteBase(e), src.part)
			if err == nil {
				w.changes = n.fsys.pendingChanges(key, src.staged, w.base, src.size) // delta.go
			}
			return w, e, src, err
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, e, src, err
		}
		e = n.getEntry()
		src = source{place: place{object: n.content()}}
	}
	c := src.object
	if n.fsys.partialEdit(c, key) {
		// A large file not cached: nothing is downloaded now.
		w, err = n.fsys.snapshotWork(ctx, c, remoteBase(e))
	} else {
		h := n.fsys.cfg.Blocks.Open(c)
		defer h.Close()
		w, err = n.fsys.newWorkFile(ctx, blockReaderAt{ctx, h}, c.Size, remoteBase(e), nil)
	}
	if err == nil && c.Key == key && c.ETag != "" && c.ETag == e.ETag {
		w.changes = copiedFrom(c.Size)
	}
	return w, e, src, err
}

// lockWork makes sure n has a working copy and returns with n.mu held
// (after n.fsys.localMu, when local is set) and n.work set. A finished
// upload may release an unchanged copy (FS.settle) between ensureWork and
// the lock; then the copy is made again.
func (n *fileNode) lockWork(ctx context.Context, truncate, local bool) error {
	for {
		if err := n.ensureWork(ctx, truncate); err != nil {
			return err
		}
		if local {
			n.fsys.localMu.Lock()
		}
		n.mu.Lock()
		if n.work != nil {
			return nil
		}
		n.mu.Unlock()
		if local {
			n.fsys.localMu.Unlock()
		}
	}
}

// forWriting returns n's working copy ready to be written: a committed
// copy is copied first. Called with n.mu held; the copy is local disk I/O.
func (n *fileNode) forWritingLocked() (*workFile, error) {
	w := n.work
	if !w.committed {
		return w, nil
	}
	nw, err := n.fsys.newWorkFile(context.Background(), w.f, w.size, w.base, w.partial)
	if err != nil {
		return nil, err
	}
	nw.changes = w.changes
	w.close()
	n.work = nw
	return nw, nil
}

// commitLocked hands a changed working copy to the journal. Called with
// n.fsys.localMu and n.mu held (in that order): the journal fsyncs and
// records locally, no network.
func (n *fileNode) commitLocked() error {
	w := n.work
	if w == nil || !w.dirty {
		return nil
	}
	dir, name, key := n.location()
	if key == "" {
		// Unlinked while open: nothing to upload. Logged because a
		// skipped commit of a file that is still linked would lose it.
		n.fsys.log.Info("not journaling a file unlinked while open", "name", name, "size", w.size)
		return nil
	}
	if n.mtime.IsZero() {
		// No write or truncate set it: a change of attributes only,
		// which keeps the mtime the file had.
		n.mtime = n.entry.MTime
		if n.mtime.IsZero() {
			n.mtime = time.Now()
		}
	}
	stored := n.attrsLocked()
	stored.CTime = time.Now()
	meta := attrMeta(stored)
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("fsync working copy of %q: %w", key, err)
	}
	op := journal.Op{Kind: journal.PutFile, Key: key, Staged: w.f.Name(), Base: w.base, Meta: meta,
		Delta: w.changes.delta(w.base, w.size), Partial: w.partial.describe()}
	if err := n.fsys.cfg.Journal.Commit(op); err != nil {
		return fmt.Errorf("journal %q: %w", key, err)
	}
	w.dirty, w.committed = false, true
	n.entry = cache.Entry{Name: name, Size: w.size, ETag: n.entry.ETag, Local: true}
	n.entry.CopyAttrs(stored)
	n.ctime = stored.CTime
	if err := n.fsys.cfg.Tree.PutEntry(dir, n.entry); err != nil {
		n.fsys.log.Warn("record local change", "key", key, "err", err)
	}
	return nil
}

var _ = (fs.NodeWriter)((*fileNode)(nil))

func (n *fileNode) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	ctx = uninterrupted(ctx)
	h, ok := fh.(*fileHandle)
	if !ok || !h.writable {
		return 0, syscall.EBADF // opened read-only
	}
	// The first write makes the working copy, with the current content.
	if err := n.lockWork(ctx, false, false); err != nil {
		return 0, toErrno(n.fsys.log, "write", err)
	}
	defer n.mu.Unlock()
	w, err := n.forWritingLocked()
	if err != nil {
		return 0, toErrno(n.fsys.log, "write", err)
	}
	if h.appends {
		off = w.size
	}
	written, err := w.f.WriteAt(data, off)
	if err != nil {
		return uint32(written), toErrno(n.fsys.log, "write", err)
	}
	w.size = max(w.size, off+int64(written))
	w.changes.write(off, int64(written))
	if err := n.fsys.written(ctx, w, off, int64(written)); err != nil {
		return 0, toErrno(n.fsys.log, "write", err)
	}
	w.dirty = true
	n.mtime = time.Now()
	return uint32(written), 0
}

var _ = (fs.NodeFlusher)((*fileNode)(nil))

// Flush runs at every close(2): the change is journaled before it returns.
func (n *fileNode) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	n.fsys.localMu.Lock()
	defer n.fsys.localMu.Unlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	if h, ok := fh.(*fileHandle); ok {
		h.markClosedLocked()
	}
	return toErrno(n.fsys.log, "flush", n.commitLocked())
}

var _ = (fs.NodeFsyncer)((*fileNode)(nil))

func (n *fileNode) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	n.fsys.localMu.Lock()
	defer n.fsys.localMu.Unlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	return toErrno(n.fsys.log, "fsync", n.commitLocked())
}

var _ = (fs.NodeSetattrer)((*fileNode)(nil))

// Setattr handles truncate, chmod and utimens.
func (n *fileNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	ctx = uninterrupted(ctx)
	size, hasSize := in.GetSize()
	mode, hasMode := in.GetMode()
	mtime, hasMTime := in.GetMTime()
	atime, hasATime := in.GetATime()
	uid, hasUID := in.GetUID()
	gid, hasGID := in.GetGID()
	hasOwner := hasUID || hasGID
	// The kernel sends no atime of reads (FUSE inodes are noatime): an
	// atime comes from utimensat and goes up with the other attributes.
	setMTime := hasMTime
	hasMTime = hasMTime || hasATime
	if hasSize || hasMode || hasMTime || hasOwner {
		if err := n.fsys.writable(); err != nil {
			return toErrno(n.fsys.log, "setattr", err)
		}
	}
	switch {
	case hasSize:
		// Only the bytes that stay are needed: none for a truncate to 0.
		if err := n.lockWork(ctx, size == 0, true); err != nil {
			return toErrno(n.fsys.log, "truncate", err)
		}
	case hasMode || hasMTime || hasOwner:
		// Mode and mtime travel as metadata with the content, so they
		// are uploaded with it. A store that copies ranges server-side
		// gets only the metadata (journal.Delta covers every byte).
		if err := n.lockWork(ctx, false, true); err != nil {
			return toErrno(n.fsys.log, "setattr", err)
		}
	default:
		n.fsys.localMu.Lock()
		n.mu.Lock()
	}
	defer n.fsys.localMu.Unlock()
	defer n.mu.Unlock()
	if hasMode || hasMTime || hasOwner {
		cur := n.attrsLocked()
		if hasMode {
			n.mode = syscall.S_IFREG | mode&0o7777
		}
		if setMTime {
			n.mtime = mtime
		} else if n.mtime.IsZero() {
			n.mtime = cur.MTime // an atime change keeps it
		}
		if hasATime {
			n.atime = atime
		}
		if hasOwner {
			n.owned, n.uid, n.gid = true, cur.UID, cur.GID
			if hasUID {
				n.uid = uid
			}
			if hasGID {
				n.gid = gid
			}
		}
		n.ctime = time.Now()
	}
	if hasSize {
		w, err := n.forWritingLocked()
		if err == nil {
			err = w.f.Truncate(int64(size))
		}
		if err != nil {
			return toErrno(n.fsys.log, "truncate", err)
		}
		w.size, w.dirty = int64(size), true
		w.changes.truncate(int64(size))
		n.fsys.truncated(w, int64(size))
		if !setMTime {
			n.mtime = time.Now()
		}
	} else if hasMode || hasMTime || hasOwner {
		// A committed copy is the journal's: the change needs a copy of
		// its own.
		w, err := n.forWritingLocked()
		if err != nil {
			return toErrno(n.fsys.log, "setattr", err)
		}
		w.dirty = true
	}
	// Unless a writable handle is still open, whose close will journal
	// it, no close will follow: journal it now. (Counted by closes, not
	// releases: the kernel releases a closed handle asynchronously.)
	if n.unclosed == 0 {
		if err := n.commitLocked(); err != nil {
			return toErrno(n.fsys.log, "setattr", err)
		}
	}
	n.fillAttrLocked(&out.Attr)
	return 0
}

// fillAttrLocked describes the file as this machine sees it.
func (n *fileNode) fillAttrLocked(out *fuse.Attr) {
	e := n.attrsLocked()
	if n.work != nil {
		e.Size = n.work.size
	}
	n.fsys.fillFileAttr(e, out)
	if _, _, key := n.location(); key == "" {
		out.Nlink = 0 // unlinked, still open
	}
}

// attrsLocked is the file's entry with the attributes set locally.
// Called with n.mu held.
func (n *fileNode) attrsLocked() cache.Entry {
	e := n.entry
	if !n.mtime.IsZero() {
		e.MTime = n.mtime
	}
	if n.mode != 0 {
		e.Mode = n.mode
	}
	if n.owned {
		e.Owner, e.UID, e.GID = true, n.uid, n.gid
	} else if !e.Owner {
		e.UID, e.GID = n.fsys.uid, n.fsys.gid
	}
	if !n.atime.IsZero() {
		e.ATime = n.atime
	}
	if !n.ctime.IsZero() {
		e.CTime = n.ctime
	}
	e.Attrs = e.Attrs || n.mode != 0 || !n.mtime.IsZero() || n.owned
	return e
}

// --- directory operations ---

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
	ch := n.NewInode(ctx, node, fs.StableAttr{Mode: syscall.S_IFREG})
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
	return n.NewInode(ctx, &dirNode{fsys: n.fsys}, fs.StableAttr{Mode: syscall.S_IFDIR}), 0
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
	op := journal.Op{Kind: journal.Delete, Key: key, Base: remoteBase(e), Trash: n.fsys.trashKey(cache.JoinPath(dir, name), e)}
	if err := n.fsys.cfg.Journal.Commit(op); err != nil {
		return toErrno(n.fsys.log, "unlink", err)
	}
	if err := n.fsys.removeLocally(dir, name, false); err != nil {
		return toErrno(n.fsys.log, "unlink", err)
	}
	n.fsys.touchDir(dir, time.Now())
	n.fsys.cfg.Blocks.Forget(key, "")
	return 0
}

// maxTrashCopy is the largest object one server-side copy (CopyObject)
// can move to the trash.
const maxTrashCopy = 5 << 30

// trashKey is where a delete of the file at path (entry e) keeps it: its
// trash key, or "" when the trash is off or cannot hold it (a key over
// S3's limit, or a file one CopyObject cannot copy), which the log says.
func (f *FS) trashKey(path string, e cache.Entry) string {
	if !f.cfg.Trash {
		return ""
	}
	key := trash.Key(f.cfg.Prefix, path, time.Now())
	switch {
	case len(key) > maxKeyLen:
		f.log.Warn("deleted for good: its trash key would be longer than 1,024 bytes", "path", path)
		return ""
	case e.Size > maxTrashCopy:
		f.log.Warn("deleted for good: the trash takes files up to 5 GiB (one server-side copy)", "path", path, "size", e.Size)
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
		// Files the kernel holds under the folder now have new keys, whose
		// pending copies or uploads their next commits chain onto. (After
		// renameDir: it holds localMu, which comes after fileNode.mu.)
		if live != nil {
			resetMoved(live)
		}
		f.renamed(srcDir, dstDir)
		return nil
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
// and ready to commit. It returns nil when the store has the current content.
func (f *FS) copyLocalContent(key string, node *fileNode) (*workFile, error) {
	if node != nil {
		node.mu.Lock()
		defer node.mu.Unlock() // local disk I/O only
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
