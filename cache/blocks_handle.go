package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// Handle reads one Content through the block store. It is what an open
// file handle holds: it tracks whether its reads are sequential, and reads
// ahead when they are. A Handle is safe for concurrent use.
type Handle struct {
	s   *BlockStore
	c   *content // nil if err is set
	err error    // set by Open for a handle that cannot read

	mu        sync.Mutex
	closed    bool  // GUARDED_BY(mu)
	lastEnd   int64 // GUARDED_BY(mu): end of the previous read; -1 before the first
	window    int64 // GUARDED_BY(mu): read-ahead window in blocks; 0 while not sequential
	aheadNext int64 // GUARDED_BY(mu): first block read-ahead has not requested yet
	// seeking: the reader seeked, so its misses fetch only the pages
	// around them (see blocks_partial.go), until seqReadsToResume reads
	// in a row continue where the previous one ended.
	seeking bool // GUARDED_BY(mu)
	streak  int  // GUARDED_BY(mu): sequential reads in a row while seeking
}

// blockWait is a read waiting for one block's flight.
type blockWait struct {
	k  blockKey
	fl *flight
}

// ReadAt reads len(p) bytes at off, like io.ReaderAt: it fetches the
// missing blocks that cover them (joining fetches already in flight),
// then reads from disk. It returns io.EOF with the bytes up to the end of
// the content. A fetch failure is returned wrapped, with errors.Is intact:
// backend.ErrPrecondition means the object changed. Cancelling ctx stops
// the wait, not the fetch.
func (h *Handle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if h.err != nil {
		return 0, h.err
	}
	c, s := h.c, h.s
	if off < 0 {
		return 0, fmt.Errorf("read %q at %d: negative offset", c.key, off)
	}
	if off >= c.size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	end := min(off+int64(len(p)), c.size)
	from, to, runLen, seeking, err := h.observe(off, end)
	if err != nil {
		return 0, err
	}
	if from < to {
		s.prefetch(c, from, to, runLen)
	}

	// Large reads go in chunks, so that one read never holds more than a
	// fraction of the budget at once.
	chunk := s.runBlocks * s.bs
	n := 0
	for pos := off; pos < end; {
		next := min(end, (pos/chunk+1)*chunk)
		m, err := h.readChunk(ctx, p[pos-off:next-off], pos, seeking)
		n += m
		if err != nil {
			return n, err
		}
		pos = next
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// observe records a read of [off, end) and decides what to read ahead.
//
// A read is sequential when it starts less than a block away from where
// the previous one ended: the kernel sends a stream's reads concurrently,
// so they may arrive slightly out of order, and requiring an exact match
// would reset the window at every swap. The window starts at two blocks
// and doubles each time the reader has consumed half of what was
// requested, up to the store's limit. observe returns the blocks
// [from, to) to request and the largest run per GET; a random read resets
// the window and asks for none.
//
// A read that seeks (one that is not sequential, the first read of a
// handle aside) puts the handle in seeking mode, reported as seeking: its misses fetch pages, not whole blocks, and nothing is read
// ahead, until seqReadsToResume sequential reads in a row end it.
func (h *Handle) observe(off, end int64) (from, to, runLen int64, seeking bool, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return 0, 0, 0, false, fmt.Errorf("read %q: %w", h.c.key, errHandleClosed)
	}
	bs, maxWindow := h.s.bs, h.s.maxAheadBlocks
	sequential := h.lastEnd > 0 && off > h.lastEnd-bs && off < h.lastEnd+bs
	if tol := min(h.window*bs, maxReorderBytes); !sequential && h.window > 0 && off > h.lastEnd-tol && off < h.lastEnd+tol {
		// The kernel sends a sequential reader's reads concurrently (16
		// MiB of read-ahead in 1 MiB reads), and they reach us in any
		// order: a read a little ahead of the stream overtook others, and
		// one a little behind was overtaken. Within the stream's window,
		// neither resets it nor counts as a seek; a late one asks for
		// nothing more.
		if off < h.lastEnd {
			return 0, 0, 0, false, nil
		}
		sequential = true
	}
	if !sequential {
		h.seeking = h.lastEnd >= 0
		h.lastEnd, h.window, h.aheadNext, h.streak = end, 0, 0, 0
		return 0, 0, 0, h.seeking, nil
	}
	h.lastEnd = max(h.lastEnd, end) // a late read does not move the stream back
	if h.seeking {
		if h.streak++; h.streak < seqReadsToResume {
			return 0, 0, 0, true, nil
		}
		h.seeking = false
	}
	if maxWindow == 0 {
		return 0, 0, 0, false, nil
	}
	next := (end-1)/bs + 1 // first block after this read
	h.aheadNext = max(h.aheadNext, next)
	switch queued := h.aheadNext - next; {
	case h.window == 0:
		h.window = min(2, maxWindow)
	case queued > h.window/2:
		return 0, 0, 0, false, nil // enough requested already
	default:
		h.window = min(2*h.window, maxWindow)
	}
	from, to = h.aheadNext, min(next+h.window, h.c.nblocks)
	if from >= to {
		return 0, 0, 0, false, nil
	}
	h.aheadNext = to
	// Several GETs per window, for parallelism, each as long as possible.
	runLen = max(1, min(h.window/4, h.s.runBlocks))
	return from, to, runLen, false, nil
}

var errHandleClosed = errors.New("handle closed")

// readChunk reads p at off; all of it lies within one chunk of at most
// runBlocks blocks. A read that seeks fetches only the pages it misses
// (and a few around them); a sequential one fetches whole blocks, and
// completes the partial blocks it meets.
func (h *Handle) readChunk(ctx context.Context, p []byte, off int64, seeking bool) (int, error) {
	c, s := h.c, h.s
	end := off + int64(len(p))
	first, last := off/s.bs, (end-1)/s.bs
	for {
		f, holds, waited, err := h.holdChunk(ctx, off, end, first, last, seeking)
		if err != nil {
			return 0, err
		}
		// A read that joined a fetch of other pages of a partial block
		// holds it without the pages it needs: it lets go and asks again
		// (that fetch is done now, so the next try starts its own). A read
		// that found all its pages cached took holds only on those.
		if waited && !h.covered(holds, off, end) {
			continue
		}

		// os.File.ReadAt reads all of p unless the file is short, and it
		// cannot be: every byte of p is in a cached, held block.
		if _, rerr := f.ReadAt(p, off); rerr != nil {
			err = fmt.Errorf("read %q at %d: %w", c.key, off, rerr)
		}
		s.mu.Lock()
		s.releaseAllLocked(holds)
		s.unrefLocked(c)
		s.mu.Unlock()
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
}

// covered reports whether the held blocks hold all of [off, end). If not,
// it gives back the holds and the reference holdChunk took.
func (h *Handle) covered(holds []blockKey, off, end int64) bool {
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range holds {
		lo, hi := s.pagesFor(h.c, int64(k.i), off, end)
		if !s.coversLocked(k, lo, hi) {
			s.releaseAllLocked(holds)
			s.unrefLocked(h.c)
			return false
		}
	}
	return true
}

// holdChunk takes a hold on blocks [first, last], fetching what they miss
// of [off, end), and a reference on the content, which keeps the returned
// file open. The caller gives both back. waited says whether it waited
// for fetches.
func (h *Handle) holdChunk(ctx context.Context, off, end, first, last int64, seeking bool) (_ *os.File, _ []blockKey, waited bool, _ error) {
	c, s := h.c, h.s
	holds := make([]blockKey, 0, last-first+1)
	var waits []blockWait

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, nil, false, fmt.Errorf("read %q: %w", c.key, ErrBlockStoreClosed)
	}
	if c.gone() {
		s.mu.Unlock()
		return nil, nil, false, fmt.Errorf("read %q: %w", c.key, c.goneErr)
	}
	f, err := s.fileLocked(c)
	if err != nil {
		s.mu.Unlock()
		return nil, nil, false, fmt.Errorf("read %q: %w", c.key, err)
	}
	c.refs++ // keeps f open through the pread, whatever the handle does
	fail := func(err error) (*os.File, []blockKey, bool, error) {
		s.abandonLocked(waits)
		s.releaseAllLocked(holds)
		s.unrefLocked(c)
		s.mu.Unlock()
		return nil, nil, false, fmt.Errorf("read %q: %w", c.key, err)
	}
	for i := first; i <= last; i++ {
		k := blockKey{c, uint32(i)}
		lo, hi := s.pagesFor(c, i, off, end)
		if s.coversLocked(k, lo, hi) && s.acquireLocked(k) {
			s.stats.Hits++
			holds = append(holds, k)
			continue
		}
		if fl, ok := s.flights[k]; ok {
			s.stats.Joins++
			fl.waiters++
			waits = append(waits, blockWait{k, fl})
			continue
		}
		if seeking || s.cachedLocked(k) {
			// A reader that seeks fetches pages around its read; a
			// sequential one completes a partial block.
			if seeking {
				lo, hi = s.randomPagesLocked(k, lo, hi)
			} else {
				lo, hi = s.fillPagesLocked(k)
			}
			r, err := s.startPagesLocked(c, i, lo, hi, runRead)
			if err != nil {
				return fail(err)
			}
			s.stats.Misses++
			r.flights[0].waiters++
			waits = append(waits, blockWait{k, r.flights[0]})
			continue
		}
		j := i
		for j < last && s.missingLocked(blockKey{c, uint32(j + 1)}) {
			j++
		}
		r, err := s.startRunLocked(c, i, j-i+1, runRead)
		if err != nil {
			return fail(err)
		}
		for jj, fl := range r.flights {
			s.stats.Misses++
			fl.waiters++
			waits = append(waits, blockWait{blockKey{c, uint32(i + int64(jj))}, fl})
		}
		i = j
	}
	s.mu.Unlock()
	if len(waits) == 0 {
		return f, holds, false, nil
	}

	holds, err = h.await(ctx, waits, holds)
	if err != nil {
		s.mu.Lock()
		s.releaseAllLocked(holds)
		s.unrefLocked(c)
		s.mu.Unlock()
		return nil, nil, true, err
	}
	return f, holds, true, nil
}

// await waits for the flights of waits, adding a hold per block fetched.
// On the first failure or on cancellation it stops waiting for the rest,
// giving back whatever they hand over.
func (h *Handle) await(ctx context.Context, waits []blockWait, holds []blockKey) ([]blockKey, error) {
	for idx, w := range waits {
		select {
		case <-w.fl.done:
			if w.fl.err != nil {
				h.s.mu.Lock()
				h.s.abandonLocked(waits[idx+1:])
				h.s.mu.Unlock()
				return holds, w.fl.err
			}
			holds = append(holds, w.k)
		case <-ctx.Done():
			h.s.mu.Lock()
			h.s.abandonLocked(waits[idx:])
			h.s.mu.Unlock()
			return holds, fmt.Errorf("read %q: %w", h.c.key, ctx.Err())
		}
	}
	return holds, nil
}

// abandonLocked stops waiting for flights: one not done yet forgets the
// waiter; one done already handed over a hold, which is released. done is
// closed under mu, so the check cannot race with the hand-over.
func (s *BlockStore) abandonLocked(waits []blockWait) {
	for _, w := range waits {
		select {
		case <-w.fl.done:
			if w.fl.err == nil {
				s.releaseLocked(w.k)
			}
		default:
			w.fl.waiters--
		}
	}
}

func (s *BlockStore) releaseAllLocked(holds []blockKey) {
	for _, k := range holds {
		s.releaseLocked(k)
	}
}

// Close releases the handle. Read-ahead it started goes on and caches its
// blocks; reads after Close fail.
func (h *Handle) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	h.mu.Unlock()

	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	h.s.unrefLocked(h.c)
}
