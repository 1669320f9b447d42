package vfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/nimbus-fs/nimbus/backend"
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
	// StreamPartSize and StartStream: upload while writing (stream.go).
	StreamPartSize() int64
	StartStream(staged, key string, meta map[string]string) *journal.Stream
}

// workFile is the local content of a file.
type workFile struct {
	f    *os.File
	size int64
	// dirty: written since the last commit.
	dirty bool
	// committed: the journal owns f's path; copy before writing again.
	committed bool
	// linked: f is a second name of a committed copy's file (forAttrsLocked),
	// whose bytes the journal may still upload; copy before writing.
	linked bool
	// sum is the hex SHA-256 of a linked copy's content, when the journal
	// knew it: its commit then need not read the file again.
	sum string
	// base is the remote version the edit chain began from.
	base journal.Base
	// changes are the bytes that may differ from base's content.
	changes changes
	// partial, when set, says which bytes the file lacks and where they
	// are (partial.go).
	partial *partial
	// stream, when set, follows a copy written sequentially from empty,
	// to upload it while it is written (stream.go).
	stream *streamer
}

func (w *workFile) close() {
	if w.partial != nil {
		w.partial.drop()
	}
	if s := w.stream; s != nil && s.stream != nil {
		// Never committed: nothing will complete its upload.
		s.stream.Abort()
	}
	w.stream = nil
	if err := w.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		// Read-only use or content already committed: nothing is lost.
		slog.Debug("closing a working copy", "path", w.f.Name(), "err", err)
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
	if f.cfg.ReadOnly {
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
	if w.size == 0 {
		f.startStreaming(w)
	}
	return w, nil
}

func removeQuietly(path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		// A leftover staging file is removed by the journal at next open.
		slog.Debug("removing a staging file", "path", path, "err", err)
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
	// Passthrough readers would not see the change (passthrough.go).
	done, err := n.holdOffPassthrough(ctx)
	if err != nil {
		return err
	}
	defer done()

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
		// source is deleted. Then it is found again where it went. The
		// journal moves it before it removes the old place (Applied
		// records the new version first), so a changed place is already
		// readable: no wait.
		if attempt >= maxResolve || !isGone(err) || n.source().place == src.place {
			return err
		}
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
	if !w.committed && !w.linked {
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

// forAttrsLocked returns n's working copy ready for a change of attributes
// that is committed at once (no handle open for writing will commit it).
// A committed copy's bytes never change, so rather than a copy of them the
// new working copy is a second name of the same file (a hard link): chmod,
// touch or rsync's utimes after close() cost no copy of the content, and
// no new inode. It is marked linked, so that a later write copies it first,
// as it would a committed copy. A partial copy, or a failed link, is
// copied as forWritingLocked does. Called with n.mu held.
func (n *fileNode) forAttrsLocked(key string) (*workFile, error) {
	w := n.work
	if !w.committed || w.partial != nil {
		return n.forWritingLocked()
	}
	nw, err := n.fsys.linkStaged(w.f.Name(), w.size)
	if err != nil {
		// Uploaded meanwhile (the journal removed the name), say.
		n.fsys.log.Debug("link the working copy for a change of attributes; copying it instead", "key", key, "err", err)
		return n.forWritingLocked()
	}
	if p, ok := n.fsys.cfg.Journal.Pending(key); ok && p.Kind == journal.PutFile && p.Partial == nil &&
		filepath.Base(p.Staged) == filepath.Base(w.f.Name()) && p.Size == w.size {
		nw.sum = p.SHA256
	}
	nw.base, nw.changes = w.base, w.changes
	w.close()
	n.work = nw
	return nw, nil
}

// linkStaged makes a working copy of size bytes that is a second name of
// the file at path, a committed copy or a staged file the journal holds,
// whose bytes never change. The name is a spare staging file's, taken by
// removing the spare (names there are unique, and this one is ours). The
// copy is marked linked: a write copies it first.
func (f *FS) linkStaged(path string, size int64) (*workFile, error) {
	spare, err := f.cfg.Journal.StagingFile()
	if err != nil {
		return nil, err
	}
	name := spare.Name()
	if err := spare.Close(); err != nil {
		return nil, err
	}
	if err := os.Remove(name); err != nil {
		return nil, err
	}
	if err := os.Link(path, name); err != nil {
		return nil, err
	}
	file, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		removeQuietly(name)
		return nil, err
	}
	return &workFile{f: file, size: size, linked: true}, nil
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
	// The journal makes the content durable: it fsyncs the file, or, for
	// a small one, writes the bytes into the record (no fsync at all).
	op := journal.Op{Kind: journal.PutFile, Key: key, Staged: w.f.Name(), Base: w.base, Meta: meta,
		Delta: w.changes.delta(w.base, w.size), Partial: w.partial.describe()}
	if op.Delta == nil && op.Partial == nil {
		op.Stream, op.SHA256 = n.streamForCommitLocked(w, key, meta) // stream.go
		if op.SHA256 == "" {
			op.SHA256 = w.sum
		}
	} else {
		n.stopStreamingLocked(w, "a delta or partial upload")
	}
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
	n.streamWrittenLocked(w, data[:written], off) // stream.go
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
		n.streamTruncatedLocked(w, int64(size)) // stream.go
		w.size, w.dirty = int64(size), true
		w.changes.truncate(int64(size))
		n.fsys.truncated(w, int64(size))
		if !setMTime {
			n.mtime = time.Now()
		}
	} else if hasMode || hasMTime || hasOwner {
		// A committed copy is the journal's: the change needs a copy of
		// its own, which a change committed now can share (forAttrsLocked).
		var w *workFile
		var err error
		if n.unclosed == 0 {
			_, _, key := n.location()
			w, err = n.forAttrsLocked(key)
		} else {
			w, err = n.forWritingLocked()
		}
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
