package vfs

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// Editing a large file whose content is not cached.
//
// Copying the whole content into the working copy at the first write would
// download all of it. Instead the first write has the mount's snapshots
// (backend/snapshots, which explains why and how they are kept) make a
// server-side copy of the version being edited. The working copy then
// starts empty at the full size and records the ranges it lacks; their
// bytes are the snapshot's. Reads of them go through the block cache. The
// upload copies the unchanged parts server-side (journal.Delta) and reads
// from the snapshot only the bytes around the changes that it must send
// (journal.Partial).

// snapshotter is what partial edits need of the mount's snapshots
// (backend/snapshots).
type snapshotter interface {
	// Make snapshots version etag of key, held until release is called;
	// backend.ErrPrecondition if etag is no longer key's version.
	Make(ctx context.Context, key, etag string) (snap backend.ObjectInfo, release func(), err error)
	// Hold keeps snapshot key from the sweeps until release is called.
	Hold(key string) (release func())
	// Delete deletes snapshot key now.
	Delete(ctx context.Context, key string) error
}

// partial describes a working copy that lacks some of its content.
type partial struct {
	// snap is the snapshot: the bytes at the missing offsets.
	snap cache.Content
	// base is the version the snapshot copied, whose cached blocks hold
	// the same bytes while it is there.
	base cache.Content
	// missing are the ranges the working copy lacks, sorted and disjoint.
	missing []journal.Range
	// release drops the hold on the snapshot (snapshotter.Hold).
	release func()
}

// maxMissing bounds the ranges a partial working copy tracks; writes more
// scattered than that make it fetch the rest (FS.complete).
const maxMissing = 4096

// cut records that [off, off+n) is now in the working copy.
func (p *partial) cut(off, n int64) {
	if n <= 0 {
		return
	}
	end := off + n
	out := p.missing[:0:0]
	for _, r := range p.missing {
		if r.End() <= off || r.Off >= end {
			out = append(out, r)
			continue
		}
		if r.Off < off {
			out = append(out, journal.Range{Off: r.Off, Len: off - r.Off})
		}
		if r.End() > end {
			out = append(out, journal.Range{Off: end, Len: r.End() - end})
		}
	}
	p.missing = out
}

// truncate records a truncate to size: bytes past it are gone, and bytes
// that come back are zeros, which the working copy has.
func (p *partial) truncate(size int64) {
	p.cut(size, max(0, p.lastEnd()-size))
}

func (p *partial) lastEnd() int64 {
	if len(p.missing) == 0 {
		return 0
	}
	return p.missing[len(p.missing)-1].End()
}

// drop gives up the hold on the snapshot, if p has one.
func (p *partial) drop() {
	if p.release != nil {
		p.release()
	}
}

// done reports whether the working copy lacks nothing any more.
func (p *partial) done() bool { return len(p.missing) == 0 }

// describe is p as a journal op carries it; nil when nothing is missing.
func (p *partial) describe() *journal.Partial {
	if p == nil || p.done() {
		return nil
	}
	return &journal.Partial{From: p.snap.Key, FromETag: p.snap.ETag, FromSize: p.snap.Size, Missing: append([]journal.Range(nil), p.missing...)}
}

// read fills the parts of dest, read at off, that the working copy lacks.
func (p *partial) read(ctx context.Context, blocks contentCache, dest []byte, off int64) error {
	return backend.EachWithin(p.missing, off, off+int64(len(dest)), func(m backend.Range) error {
		return p.readRange(ctx, blocks, dest[m.Off-off:m.End()-off], m.Off)
	})
}

// readRange reads the missing bytes at off: from the cached version while
// it is current, else from the snapshot.
func (p *partial) readRange(ctx context.Context, blocks contentCache, dest []byte, off int64) error {
	var err error
	for _, c := range []cache.Content{p.base, p.snap} {
		if c.Key == "" {
			continue
		}
		h := blocks.Open(c)
		var n int
		n, err = h.ReadAt(ctx, dest, off)
		h.Close()
		if err == io.EOF && n == len(dest) {
			err = nil
		}
		if err == nil {
			return nil
		}
		if !isGone(err) {
			break
		}
	}
	return fmt.Errorf("read the part of a file not downloaded yet: %w", err)
}

// holding returns a partial that refers to the same snapshot as p, with
// its own copy of the ranges and its own hold.
func (f *FS) holding(p *partial) *partial {
	if p == nil {
		return nil
	}
	return &partial{snap: p.snap, base: p.base, missing: append([]journal.Range(nil), p.missing...), release: f.cfg.Snapshots.Hold(p.snap.Key)}
}

// fromJournal is the partial of a pending op, not held: a working copy
// made from it holds its own (FS.holding).
func (f *FS) fromJournal(jp *journal.Partial) *partial {
	if jp == nil {
		return nil
	}
	return &partial{snap: cache.Content{Key: jp.From, ETag: jp.FromETag, Size: jp.FromSize}, missing: append([]journal.Range(nil), jp.Missing...)}
}

// written records a write of n bytes at off into working copy w. Writes
// scattered too widely to track make it fetch what it lacks.
func (f *FS) written(ctx context.Context, w *workFile, off, n int64) error {
	p := w.partial
	if p == nil {
		return nil
	}
	p.cut(off, n)
	if len(p.missing) > maxMissing {
		return f.complete(ctx, w)
	}
	if p.done() {
		p.drop()
		w.partial = nil
	}
	return nil
}

// truncated records a truncate of working copy w to size.
func (f *FS) truncated(w *workFile, size int64) {
	if p := w.partial; p != nil {
		p.truncate(size)
		if p.done() {
			p.drop()
			w.partial = nil
		}
	}
}

// partialEdit reports whether editing content c of the file at key should
// start from a snapshot rather than a full copy: a large version that is
// not all cached, when the mount keeps snapshots.
func (f *FS) partialEdit(c cache.Content, key string) bool {
	if f.cfg.PartialMin <= 0 || f.cfg.Snapshots == nil || c.Key != key || c.ETag == "" {
		return false
	}
	return c.Size >= f.cfg.PartialMin && f.cfg.Blocks.CachedBytes(c) < c.Size
}

// snapshotWork makes a working copy of version c that holds nothing yet,
// backed by a new snapshot of c. It fails with backend.ErrPrecondition if c
// is no longer the current version.
func (f *FS) snapshotWork(ctx context.Context, c cache.Content, base journal.Base) (*workFile, error) {
	info, release, err := f.cfg.Snapshots.Make(ctx, c.Key, c.ETag)
	if err != nil {
		return nil, fmt.Errorf("partial edit: %w", err)
	}
	file, err := f.cfg.Journal.StagingFile()
	if err == nil {
		err = file.Truncate(c.Size)
		if err != nil {
			file.Close()
			removeQuietly(file.Name())
		}
	}
	if err != nil {
		release()
		if derr := f.cfg.Snapshots.Delete(ctx, info.Key); derr != nil {
			f.log.Warn("delete snapshot", "key", info.Key, "err", derr)
		}
		return nil, fmt.Errorf("staging file: %w", err)
	}
	p := &partial{snap: cache.Content{Key: info.Key, ETag: info.ETag, Size: c.Size}, base: c,
		missing: []journal.Range{{Off: 0, Len: c.Size}}, release: release}
	f.log.Debug("editing without downloading", "key", c.Key, "size", c.Size, "snapshot", info.Key)
	return &workFile{f: file, size: c.Size, base: base, partial: p}, nil
}

// complete fetches everything w lacks into it, making it a plain working
// copy. Used when its missing ranges become too scattered to track.
func (f *FS) complete(ctx context.Context, w *workFile) error {
	p := w.partial
	buf := make([]byte, 1<<20)
	for _, r := range p.missing {
		for off := r.Off; off < r.End(); off += int64(len(buf)) {
			b := buf[:min(int64(len(buf)), r.End()-off)]
			if err := p.readRange(ctx, f.cfg.Blocks, b, off); err != nil {
				return err
			}
			if _, err := w.f.WriteAt(b, off); err != nil {
				return err
			}
		}
	}
	p.drop()
	w.partial = nil
	return nil
}

// copyHeld copies into dst what src holds of size bytes: everything when
// p is nil, else all but p's missing ranges, leaving holes there.
func copyHeld(dst *os.File, src io.ReaderAt, size int64, p *partial) (int64, error) {
	if p == nil {
		return io.CopyBuffer(io.NewOffsetWriter(dst, 0), io.NewSectionReader(src, 0, size), make([]byte, 1<<20))
	}
	buf := make([]byte, 1<<20)
	pos := int64(0)
	held := func(end int64) error {
		if end <= pos {
			return nil
		}
		_, err := io.CopyBuffer(io.NewOffsetWriter(dst, pos), io.NewSectionReader(src, pos, end-pos), buf)
		return err
	}
	for _, r := range p.missing {
		if err := held(min(r.Off, size)); err != nil {
			return 0, err
		}
		pos = max(pos, r.End())
	}
	if err := held(size); err != nil {
		return 0, err
	}
	return size, dst.Truncate(size)
}
