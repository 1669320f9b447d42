package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	from, to, runLen, err := h.observe(off, end)
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
		m, err := h.readChunk(ctx, p[pos-off:next-off], pos)
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
func (h *Handle) observe(off, end int64) (from, to, runLen int64, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return 0, 0, 0, fmt.Errorf("read %q: %w", h.c.key, errHandleClosed)
	}
	bs, maxWindow := h.s.bs, h.s.maxAheadBlocks
	sequential := h.lastEnd > 0 && off > h.lastEnd-bs && off < h.lastEnd+bs
	if !sequential || maxWindow == 0 {
		h.lastEnd, h.window, h.aheadNext = end, 0, 0
		return 0, 0, 0, nil
	}
	h.lastEnd = max(h.lastEnd, end) // a late read does not move the stream back
	next := (end-1)/bs + 1          // first block after this read
	h.aheadNext = max(h.aheadNext, next)
	switch queued := h.aheadNext - next; {
	case h.window == 0:
		h.window = min(2, maxWindow)
	case queued > h.window/2:
		return 0, 0, 0, nil // enough requested already
	default:
		h.window = min(2*h.window, maxWindow)
	}
	from, to = h.aheadNext, min(next+h.window, h.c.nblocks)
	if from >= to {
		return 0, 0, 0, nil
	}
	h.aheadNext = to
	// Several GETs per window, for parallelism, each as long as possible.
	runLen = max(1, min(h.window/4, h.s.runBlocks))
	return from, to, runLen, nil
}

var errHandleClosed = errors.New("handle closed")

// readChunk reads p at off; all of it lies within one chunk of at most
// runBlocks blocks.
func (h *Handle) readChunk(ctx context.Context, p []byte, off int64) (int, error) {
	c, s := h.c, h.s
	first, last := off/s.bs, (off+int64(len(p))-1)/s.bs
	holds := make([]blockKey, 0, last-first+1)
	var waits []blockWait

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return 0, fmt.Errorf("read %q: %w", c.key, ErrBlockStoreClosed)
	}
	if c.gone() {
		s.mu.Unlock()
		return 0, fmt.Errorf("read %q: %w", c.key, c.goneErr)
	}
	f, err := s.fileLocked(c)
	if err != nil {
		s.mu.Unlock()
		return 0, fmt.Errorf("read %q: %w", c.key, err)
	}
	c.refs++ // keeps f open through the pread, whatever the handle does
	for i := first; i <= last; i++ {
		k := blockKey{c, uint32(i)}
		if s.acquireLocked(k) {
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
		j := i
		for j < last && s.missingLocked(blockKey{c, uint32(j + 1)}) {
			j++
		}
		r, err := s.startRunLocked(c, i, j-i+1, runRead)
		if err != nil {
			s.abandonLocked(waits)
			s.releaseAllLocked(holds)
			s.unrefLocked(c)
			s.mu.Unlock()
			return 0, fmt.Errorf("read %q: %w", c.key, err)
		}
		for jj, fl := range r.flights {
			s.stats.Misses++
			fl.waiters++
			waits = append(waits, blockWait{blockKey{c, uint32(i + int64(jj))}, fl})
		}
		i = j
	}
	s.mu.Unlock()

	holds, err = h.await(ctx, waits, holds)
	if err == nil {
		// os.File.ReadAt reads all of p unless the file is short, and it
		// cannot be: every byte of p is in a cached, held block.
		if _, rerr := f.ReadAt(p, off); rerr != nil {
			err = fmt.Errorf("read %q at %d: %w", c.key, off, rerr)
		}
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
