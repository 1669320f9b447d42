package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nimbus-fs/nimbus/backend"
)

// A blockRun is a range of consecutive missing blocks of one content, fetched
// by one ranged GET. Each block has its own flight, so that readers wait
// per block and a block already in flight is never fetched twice.
type blockRun struct {
	c       *content
	f       *os.File // c's file, kept open by the run's reference on c
	first   int64    // index of the first block
	flights []*flight
	ahead   bool // started by read-ahead
	// background: nobody is blocked on it (read-ahead, Pin), so it takes
	// one of the fewer read-ahead slots.
	background bool
	// budgeted: its bytes were reserved within Capacity (the content was
	// not pinned when the GET started). GUARDED_BY(BlockStore.mu)
	budgeted bool
	// adopted: filled from a local copy by Adopt, not fetched.
	adopted bool
	// pages: the run fetches only the pages [pageLo, pageHi) of its one
	// block (see blocks_partial.go). fill: that block was cached
	// partially, and the run holds it until it ends.
	pages          bool
	fill           bool
	pageLo, pageHi int64
	// published: the first blocks, already published while the GET
	// streams the rest (see fetchInto). Only the run's goroutine uses it.
	published      int
	publishedBytes int64
}

// span is the byte range of the content that r fetches.
func (s *BlockStore) span(r *blockRun) (off, n int64) {
	if r.pages {
		off = r.pageLo * s.page
		return r.first*s.bs + off, min(r.pageHi*s.page, s.blockLen(r.c, r.first)) - off
	}
	for j := range int64(len(r.flights)) {
		n += s.blockLen(r.c, r.first+j)
	}
	return r.first * s.bs, n
}

// runKind says who starts a run.
type runKind int

const (
	runRead  runKind = iota // a read waits for it
	runAhead                // read-ahead
	runPin                  // Pin
)

// startRunLocked registers flights for blocks [first, first+n) of c, all
// missing, and starts the GET in the background. Read-ahead blocks count
// towards the read-ahead budget until they are read or dropped.
func (s *BlockStore) startRunLocked(c *content, first, n int64, kind runKind) (*blockRun, error) {
	if s.closed {
		return nil, ErrBlockStoreClosed
	}
	f, err := s.fileLocked(c)
	if err != nil {
		return nil, err
	}
	ahead := kind == runAhead
	r := &blockRun{c: c, f: f, first: first, flights: make([]*flight, n), ahead: ahead, background: kind != runRead}
	for j := range n {
		fl := &flight{done: make(chan struct{}), ahead: ahead}
		r.flights[j] = fl
		s.flights[blockKey{c, uint32(first + j)}] = fl
		if ahead {
			s.ahead += s.blockLen(c, first+j)
		}
	}
	c.refs++
	s.wg.Add(1)
	go s.fetchRun(r)
	return r, nil
}

// fetchRun fetches r and publishes its blocks. It runs with the store's
// background context, not a reader's: a reader that gives up only stops
// waiting, and the block still lands in the cache for the next one.
func (s *BlockStore) fetchRun(r *blockRun) {
	defer s.wg.Done()
	off, n := s.span(r)

	err := s.acquireSlot(r.background)
	if err == nil {
		if err = s.reserve(r, n); err == nil {
			start := time.Now()
			err = s.fetchInto(r, off, n)
			s.log.Debug("block fetch", "key", r.c.key, "off", off, "len", n,
				"blocks", len(r.flights), "ahead", r.ahead, "dur", time.Since(start), "err", err)
		}
		s.releaseSlot(r.background)
	}
	if err != nil && !errors.Is(err, errNoRoom) {
		s.log.Log(context.Background(), fetchErrorLevel(err), "block fetch failed",
			"key", r.c.key, "off", off, "len", n, "err", err)
	}
	s.finishRun(r, n, err)
}

// fetchErrorLevel keeps the expected failures (offline, cancelled, object
// replaced) out of the warnings; the caller sees them anyway.
func fetchErrorLevel(err error) slog.Level {
	switch {
	case errors.Is(err, backend.ErrOffline), errors.Is(err, backend.ErrPrecondition),
		errors.Is(err, ErrBlockStoreClosed), errors.Is(err, context.Canceled):
		return slog.LevelDebug
	}
	return slog.LevelWarn
}

// acquireSlot waits for a GET slot. Background runs (read-ahead, Pin)
// first take one of the fewer read-ahead slots, so that a reader's own
// fetch soon finds a slot even under heavy read-ahead or a large Pin.
func (s *BlockStore) acquireSlot(background bool) error {
	if background {
		select {
		case s.aheadSlots <- struct{}{}:
		case <-s.ctx.Done():
			return ErrBlockStoreClosed
		}
	}
	select {
	case s.fetchSlots <- struct{}{}:
		return nil
	case <-s.ctx.Done():
		if background {
			<-s.aheadSlots
		}
		return ErrBlockStoreClosed
	}
}

func (s *BlockStore) releaseSlot(background bool) {
	<-s.fetchSlots
	if background {
		<-s.aheadSlots
	}
}

// reserve makes room for the n bytes of r by evicting, and counts them as
// reserved until finishRun, so that concurrent fetches cannot overshoot the
// budget together. A fetch somebody waits for goes ahead even when nothing
// more can be evicted (every cached block is being read): the budget is
// exceeded by the blocks in use, and recovers when they are released.
// Read-ahead nobody waits for is dropped instead; the check and the failure
// happen under one lock, so no reader can join a run that fails this way.
// The blocks of a pinned content are outside the budget: they evict
// nothing.
func (s *BlockStore) reserve(r *blockRun, n int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.c.gone() {
		return r.c.goneErr
	}
	if r.c.pinned {
		return nil
	}
	if !s.evictLocked(n) && r.ahead && !r.hasWaitersLocked() {
		return errNoRoom
	}
	s.reserved += n
	r.budgeted = true
	return nil
}

func (r *blockRun) hasWaitersLocked() bool {
	for _, fl := range r.flights {
		if fl.waiters > 0 {
			return true
		}
	}
	return false
}

// fetchInto GETs [off, off+n) of r's content, pinned to its ETag, and
// writes it at the same offset of its file. The body must hold exactly n
// bytes. A long run first allocates its range (see allocate). Each block
// but the last is published as soon as it is written, so that a reader
// waits for its block, not for the whole run. On failure
// the unpublished rest is punched again: its flights are still ours, so
// nobody else reads or writes it, and nothing half-written stays on disk
// unaccounted.
func (s *BlockStore) fetchInto(r *blockRun, off, n int64) (err error) {
	c := r.c
	s.mu.Lock()
	s.stats.Fetches++
	s.mu.Unlock()

	body, err := s.fetcher.Get(s.ctx, c.key, off, n, c.etag)
	if err != nil {
		if s.ctx.Err() != nil {
			return fmt.Errorf("%w: %w", ErrBlockStoreClosed, err)
		}
		return err
	}
	defer func() {
		if cerr := body.Close(); cerr != nil {
			// The bytes were counted and checked before; a failing close
			// cannot change them.
			s.log.Debug("close body", "key", c.key, "err", cerr)
		}
	}()
	defer func() {
		if err == nil {
			return
		}
		if r.pages {
			s.punchFailedPages(r)
			return
		}
		from := off + r.publishedBytes
		if !punchable(r.c, r.f) {
			return // the same bytes, if any: the file is shared
		}
		if perr := punchHole(r.f, from, off+n-from); perr != nil {
			s.log.Debug("punch failed fetch", "key", c.key, "off", from, "err", perr)
		}
	}()

	if !r.pages && n >= minAllocateBytes {
		if err := allocate(r.f, off, n); isNoSpace(err) {
			return fmt.Errorf("allocate %d bytes in %s: %w: %w", n, r.c.path, ErrNoSpace, err)
		} else if err != nil {
			s.log.Debug("allocate run", "key", c.key, "off", off, "len", n, "err", err)
		}
	}
	bufp := s.bufPool.Get().(*[]byte)
	defer s.bufPool.Put(bufp)
	for pos := off; pos < off+n; {
		end := off + n
		last := r.pages || r.published == len(r.flights)-1
		if !last {
			end = pos + s.blockLen(c, r.first+int64(r.published))
		}
		got, err := io.CopyBuffer(io.NewOffsetWriter(r.f, pos), io.LimitReader(body, end-pos), *bufp)
		if isNoSpace(err) {
			return fmt.Errorf("write %d bytes to %s: %w: %w", n, r.c.path, ErrNoSpace, err)
		}
		if err != nil {
			return fmt.Errorf("copy body: %w", err)
		}
		if got < end-pos {
			return fmt.Errorf("short body: %d of %d bytes: %w", pos-off+got, n, io.ErrUnexpectedEOF)
		}
		pos = end
		if !last {
			if err := s.publishEarly(r); err != nil {
				return err
			}
		}
	}
	// A longer body means the store ignored the range, and the bytes kept
	// would come from the wrong offset.
	var extra [1]byte
	switch m, rerr := io.ReadFull(body, extra[:]); {
	case m > 0:
		return fmt.Errorf("body longer than the %d bytes requested", n)
	case !errors.Is(rerr, io.EOF):
		return fmt.Errorf("read end of body: %w", rerr)
	}
	return nil
}

func isNoSpace(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
}

// finishRun publishes r's blocks (err == nil) or fails its flights, and
// wakes their readers. A content retired meanwhile publishes nothing. The
// blocks go where the content's pin state says now, whatever it was when
// the GET started.
func (s *BlockStore) finishRun(r *blockRun, n int64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := r.c
	n -= r.publishedBytes
	if r.budgeted {
		s.reserved -= n
	}
	if err == nil && c.gone() {
		err = c.goneErr
	}
	switch {
	case err == nil:
		if !r.adopted {
			s.stats.FetchedBytes += n
		}
		s.unsynced[c] = struct{}{}
		c.stale = false
	case errors.Is(err, backend.ErrPrecondition):
		c.stale = true
	}
	if r.pages {
		s.publishPagesLocked(r, err)
		s.unrefLocked(c)
		if !r.budgeted {
			s.evictLocked(0)
		}
		return
	}
	for j, fl := range r.flights[r.published:] {
		i := r.first + int64(r.published+j)
		k := blockKey{c, uint32(i)}
		bl := s.blockLen(c, i)
		if err != nil {
			delete(s.flights, k)
			fl.err = fmt.Errorf("fetch %q block %d: %w", c.key, i, err)
			if fl.ahead {
				s.ahead -= bl
			}
			close(fl.done)
			continue
		}
		s.publishBlockLocked(k, fl, bl)
	}
	s.unrefLocked(c)
	if !r.budgeted {
		// Unpinned while its GET ran, so nothing was evicted for it.
		s.evictLocked(0)
	}
}

// publishEarly publishes the next block of r, whose bytes are written,
// while its GET goes on: a reader waiting for it need not wait for the
// rest of the run. The store checked the range it answered (the s3
// backend fails a ranged GET without Content-Range), so the bytes are
// those of the block; a content retired meanwhile is left to finishRun.
func (s *BlockStore) publishEarly(r *blockRun) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := r.c
	if c.gone() {
		return c.goneErr
	}
	i := r.first + int64(r.published)
	bl := s.blockLen(c, i)
	if r.budgeted {
		s.reserved -= bl
	}
	s.stats.FetchedBytes += bl
	s.unsynced[c] = struct{}{}
	c.stale = false
	s.publishBlockLocked(blockKey{c, uint32(i)}, r.flights[r.published], bl)
	r.published++
	r.publishedBytes += bl
	if !r.budgeted {
		s.evictLocked(0)
	}
	return nil
}

// publishBlockLocked caches block k, fetched by flight fl, where its
// readers and its content's pin state say, and wakes its readers.
func (s *BlockStore) publishBlockLocked(k blockKey, fl *flight, bl int64) {
	c := k.c
	delete(s.flights, k)
	switch {
	case fl.waiters > 0:
		// One hold per waiting reader: the block cannot be evicted
		// before they have read it.
		s.cacheBlockLocked(k, bl)
		s.held[k] = blockHold{refs: fl.waiters, seq: s.nextSeqLocked()}
		if fl.ahead {
			s.ahead -= bl
		}
	case c.pinned:
		s.cacheBlockLocked(k, bl)
		s.pinned[k] = s.nextSeqLocked()
		if fl.ahead {
			s.ahead -= bl
		}
	default:
		s.cacheBlockLocked(k, bl)
		s.lru.Add(k, lruEntry{seq: s.nextSeqLocked(), ahead: fl.ahead})
	}
	close(fl.done)
}

// cacheBlockLocked counts a newly cached block; the caller files it in the
// LRU, the pinned map or the held map.
func (s *BlockStore) cacheBlockLocked(k blockKey, n int64) {
	s.accountLocked(k.c, 1, n)
	s.pending[k] = struct{}{}
}

// prefetch starts read-ahead of the missing blocks in [from, to) of c, in
// GETs of at most runLen blocks each. It stops at the store-wide read-ahead
// budget, so that many sequential readers together cannot fill the cache
// with blocks nobody has read yet and evict each other's.
func (s *BlockStore) prefetch(c *content, from, to, runLen int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || c.gone() || c.stale {
		return
	}
	for i := from; i < to; {
		if !s.missingLocked(blockKey{c, uint32(i)}) {
			i++
			continue
		}
		j, n := i, s.blockLen(c, i)
		for j+1 < to && j+1-i < runLen && s.missingLocked(blockKey{c, uint32(j + 1)}) {
			j++
			n += s.blockLen(c, j)
		}
		if s.ahead+n > s.aheadLimit {
			s.log.Debug("read-ahead budget full", "key", c.key, "block", i, "ahead", s.ahead)
			return
		}
		if _, err := s.startRunLocked(c, i, j-i+1, runAhead); err != nil {
			s.log.Debug("read-ahead not started", "key", c.key, "block", i, "err", err)
			return
		}
		i = j + 1
	}
}
