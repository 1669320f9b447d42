package vfs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// Editing a large file whose content is not cached.
//
// Copying the whole content into the working copy at the first write would
// download all of it. Instead the first write has the store make a snapshot:
// a server-side copy of the version being edited, under a hidden key, which
// is one request and moves no bytes over the network. The working copy then
// starts empty at the full size and records the ranges it lacks; their bytes
// are the snapshot's. Reads of them go through the block cache. The upload
// copies the unchanged parts server-side (journal.Delta) and reads from the
// snapshot only the bytes around the changes that it must send
// (journal.Partial).
//
// Why a snapshot rather than reading the edited version later: if another
// machine replaces that version before the upload, the local version must
// still be uploaded whole, as a conflicted copy, and S3 keeps no old
// versions to rebuild it from.
//
// Snapshots live under snapshotDir/<mount id>/ and are deleted once neither
// a pending upload nor a working copy refers to them (sweepSnapshots).

// snapshotDir is the hidden folder of snapshots, at the mount's root.
const snapshotDir = ".nimbus-snapshots"

// maxSnapshotSize is the largest object one server-side copy can make
// (S3's CopyObject limit). Larger files are copied whole to edit them.
const maxSnapshotSize = 5 << 30

// snapshotStore is what snapshots need from the object store, besides
// listing.
type snapshotStore interface {
	Copy(ctx context.Context, src, srcETag, dst string, cond backend.Cond) (backend.ObjectInfo, error)
	Delete(ctx context.Context, key string, ifMatch string) error
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
	// release drops the hold on the snapshot (see snapshots.hold).
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

// snapshots tracks this mount's snapshots.
type snapshots struct {
	mu sync.Mutex
	// held counts the working copies that refer to each snapshot key.
	held map[string]int
	// suspects are keys the last sweep found unreferenced: deleted if the
	// next one finds them unreferenced still. (A reference moves from a
	// working copy to a journal op in two steps.)
	suspects map[string]bool
	// made is set once this mount has made a snapshot or found one.
	made bool
}

// hold counts a working copy's reference to snapshot key until release.
func (s *snapshots) hold(key string) (release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held == nil {
		s.held = make(map[string]int)
	}
	s.held[key]++
	s.made = true
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.held[key]--; s.held[key] <= 0 {
				delete(s.held, key)
			}
		})
	}
}

// holding returns a partial that refers to the same snapshot as p, with
// its own copy of the ranges and its own hold.
func (f *FS) holding(p *partial) *partial {
	if p == nil {
		return nil
	}
	return &partial{snap: p.snap, base: p.base, missing: append([]journal.Range(nil), p.missing...), release: f.snaps.hold(p.snap.Key)}
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

// snapshotPrefix is the key prefix of this mount's snapshots.
func (f *FS) snapshotPrefix() string {
	return f.cfg.Prefix + snapshotDir + "/" + f.cfg.MountID + "/"
}

// partialEdit reports whether editing content c of the file at key should
// start from a snapshot rather than a full copy: a large version that is
// not all cached, when the store can make one.
func (f *FS) partialEdit(c cache.Content, key string) bool {
	if f.cfg.PartialMin <= 0 || f.cfg.MountID == "" || c.Key != key || c.ETag == "" {
		return false
	}
	if _, ok := f.cfg.Store.(snapshotStore); !ok {
		return false
	}
	return c.Size >= f.cfg.PartialMin && c.Size <= maxSnapshotSize && f.cfg.Blocks.CachedBytes(c) < c.Size
}

// snapshotWork makes a working copy of version c that holds nothing yet,
// backed by a new snapshot of c. It fails with backend.ErrPrecondition if c
// is no longer the current version.
func (f *FS) snapshotWork(ctx context.Context, c cache.Content, base journal.Base) (*workFile, error) {
	id := make([]byte, 12)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	key := f.snapshotPrefix() + hex.EncodeToString(id)
	// Held before it exists, so that no sweep can take it for garbage.
	release := f.snaps.hold(key)
	info, err := f.cfg.Store.(snapshotStore).Copy(ctx, c.Key, c.ETag, key, backend.Cond{IfNoneMatch: true})
	if err != nil {
		release()
		return nil, fmt.Errorf("snapshot of %q for a partial edit: %w", c.Key, err)
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
		f.deleteSnapshot(key)
		return nil, fmt.Errorf("staging file: %w", err)
	}
	p := &partial{snap: cache.Content{Key: key, ETag: info.ETag, Size: c.Size}, base: c,
		missing: []journal.Range{{Off: 0, Len: c.Size}}, release: release}
	f.log.Debug("editing without downloading", "key", c.Key, "size", c.Size, "snapshot", key)
	return &workFile{f: file, size: c.Size, base: base, partial: p}, nil
}

func (f *FS) deleteSnapshot(key string) {
	if err := f.cfg.Store.(snapshotStore).Delete(context.Background(), key, ""); err != nil {
		f.log.Warn("delete snapshot", "key", key, "err", err)
	}
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

// sweepSnapshots deletes this mount's snapshots that nothing refers to: no
// pending journal op, no working copy. A key is deleted only when two
// sweeps in a row find it unreferenced. When final is set the mount is
// gone: working copies no longer count (a node the kernel never released
// may still hold one), and one sweep is enough.
func (f *FS) sweepSnapshots(ctx context.Context, final bool) error {
	sd, ok := f.cfg.Store.(snapshotStore)
	if !ok || f.cfg.MountID == "" || f.cfg.Journal == nil {
		return nil
	}
	var keys []string
	err := f.cfg.Store.ListFlat(ctx, f.snapshotPrefix(), func(p backend.Page) error {
		for _, o := range p.Objects {
			if !strings.HasSuffix(o.Key, "/") { // a folder, in some stores
				keys = append(keys, o.Key)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	// References are read after the listing: a snapshot listed was held
	// before it was made.
	used := make(map[string]bool)
	for _, p := range f.cfg.Journal.PendingUnder(f.cfg.Prefix) {
		if p.Partial != nil {
			used[p.Partial.From] = true
		}
	}
	s := &f.snaps
	s.mu.Lock()
	if !final {
		for k := range s.held {
			used[k] = true
		}
	}
	var doomed []string
	suspects := make(map[string]bool)
	for _, k := range keys {
		switch {
		case used[k]:
		case final || s.suspects[k]:
			doomed = append(doomed, k)
		default:
			suspects[k] = true
		}
	}
	s.suspects = suspects
	if len(keys) > 0 {
		s.made = true
	}
	s.mu.Unlock()
	for _, k := range doomed {
		if err := sd.Delete(ctx, k, ""); err != nil {
			return fmt.Errorf("delete snapshot %s: %w", k, err)
		}
	}
	if len(doomed) > 0 {
		f.log.Debug("deleted unused snapshots", "n", len(doomed))
	}
	return nil
}

// sweepInterval is how often unused snapshots are looked for, while this
// mount has any.
const sweepInterval = time.Minute

// keepSweeping sweeps snapshots until bgCtx ends: once at start (leftovers
// of a crash), then every sweepInterval while this mount has made any.
func (f *FS) keepSweeping() {
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	swept := false
	for {
		select {
		case <-f.bgCtx.Done():
			return
		case <-t.C:
		}
		f.snaps.mu.Lock()
		made := f.snaps.made
		f.snaps.mu.Unlock()
		if made || !swept {
			if err := f.sweepSnapshots(f.bgCtx, false); err != nil && f.bgCtx.Err() == nil {
				f.log.Debug("sweep snapshots", "err", err)
			} else {
				swept = true
			}
		}
		t.Reset(sweepInterval)
	}
}

// SweepSnapshots deletes the snapshots no pending upload needs. It is for
// the end of a mount, when no file is open any more.
func (f *FS) SweepSnapshots(ctx context.Context) error {
	if f.cfg.ReadOnly {
		return nil
	}
	return f.sweepSnapshots(ctx, true)
}
