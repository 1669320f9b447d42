package cache

import (
	"fmt"
	"math/bits"
)

// Partial blocks.
//
// A reader that seeks (a database, an index lookup) would pay a whole
// block for every few KiB it asks for. Its misses fetch only the pages
// around the read instead (randomFetchBytes), into a block that is then
// cached partially: s.partial records which pages of it are present. A
// partial block is cached like any other (it is in exactly one of the LRU,
// the pinned map and the held map) and counts only the bytes it holds,
// towards the budget and in its content's bytes. A later read of pages it
// lacks fills them in with a GET of its own, pinned to the same ETag, so a
// block never mixes versions; a sequential reader fills in the whole block.
// One flight per block still holds: a read that needs a block being
// fetched waits for that fetch, then looks again. A fill holds the block
// while its GET runs, so that it is neither evicted nor punched under it.

const (
	// maxBlockPages caps the pages of one block, the size of pageMask.
	maxBlockPages = 256
	// randomFetchBytes is what a miss of a reader that seeks fetches
	// around the bytes it asks for (and at least those bytes). A GET costs
	// its latency far more than its bytes, yet every byte beyond the read
	// is wasted when reads are scattered: 8 KiB keeps a 4 KiB reader well
	// under 4x the bytes it asked for (a first read of a handle fetches a
	// whole block), and still serves a read spanning two pages or the next
	// page of a B-tree node.
	randomFetchBytes = 8 << 10
	// seqReadsToResume is how many reads in a row must continue where
	// the previous one ended before a handle that seeked counts as
	// sequential again: a random reader landing next to its last read by
	// chance must not start read-ahead.
	seqReadsToResume = 2
	// maxReorderBytes caps how far from the end of a sequential stream a
	// read may start and still belong to it, having overtaken or been
	// overtaken by reads the kernel sent at the same time. Below the cap,
	// the stream's read-ahead window is the limit.
	maxReorderBytes = 32 << 20
)

// pageMask is the set of present pages of a partial block.
type pageMask [maxBlockPages / 64]uint64

func (m *pageMask) setRange(lo, hi int64) {
	for p := lo; p < hi; p++ {
		m[p/64] |= 1 << (p % 64)
	}
}

func (m *pageMask) has(p int64) bool { return m[p/64]&(1<<(p%64)) != 0 }

func (m *pageMask) hasRange(lo, hi int64) bool {
	for p := lo; p < hi; p++ {
		if !m.has(p) {
			return false
		}
	}
	return true
}

// andNot reports whether m has pages that o lacks.
func (m *pageMask) andNot(o *pageMask) bool {
	for j := range m {
		if m[j]&^o[j] != 0 {
			return true
		}
	}
	return false
}

func (m *pageMask) count() int64 {
	var n int
	for _, w := range m {
		n += bits.OnesCount64(w)
	}
	return int64(n)
}

// pageSizeFor is the page size for a block size: the file system block,
// or a multiple of it when a block would have more than maxBlockPages.
func pageSizeFor(bs int64) int64 {
	per := (bs/fsBlockSize + maxBlockPages - 1) / maxBlockPages
	return fsBlockSize * per
}

// blockPages is the number of pages of block i of c.
func (s *BlockStore) blockPages(c *content, i int64) int64 {
	return (s.blockLen(c, i) + s.page - 1) / s.page
}

// maskLen is the bytes of block i of c that the pages of m hold: the last
// page of the last block may be short.
func (s *BlockStore) maskLen(c *content, i int64, m *pageMask) int64 {
	n := m.count() * s.page
	if last := s.blockPages(c, i) - 1; m.has(last) {
		n -= (last+1)*s.page - s.blockLen(c, i)
	}
	return n
}

// cachedLenLocked is the bytes cached block k holds on disk.
func (s *BlockStore) cachedLenLocked(k blockKey) int64 {
	if m, ok := s.partial[k]; ok {
		return s.maskLen(k.c, int64(k.i), &m)
	}
	return s.blockLen(k.c, int64(k.i))
}

// coversLocked reports whether block k is cached with pages [lo, hi).
func (s *BlockStore) coversLocked(k blockKey, lo, hi int64) bool {
	if !s.cachedLocked(k) {
		return false
	}
	m, ok := s.partial[k]
	return !ok || m.hasRange(lo, hi)
}

// completeLocked reports whether block k is cached whole.
func (s *BlockStore) completeLocked(k blockKey) bool {
	_, part := s.partial[k]
	return !part && s.cachedLocked(k)
}

// pagesFor returns the pages [lo, hi) of block i that hold the bytes
// [off, end) of the content, clipped to the block.
func (s *BlockStore) pagesFor(c *content, i, off, end int64) (lo, hi int64) {
	start := i * s.bs
	off, end = max(off, start)-start, min(end, start+s.blockLen(c, i))-start
	return off / s.page, (end + s.page - 1) / s.page
}

// randomPagesLocked returns the pages a reader that seeks fetches for a
// read of pages [lo, hi) of block k: randomFetchBytes around them,
// aligned, and without the pages at either end that are already present.
func (s *BlockStore) randomPagesLocked(k blockKey, lo, hi int64) (int64, int64) {
	per := max(1, randomFetchBytes/s.page)
	lo = lo / per * per
	hi = min((hi+per-1)/per*per, s.blockPages(k.c, int64(k.i)))
	return s.trimPresentLocked(k, lo, hi)
}

// fillPagesLocked returns the pages a sequential reader or a Pin fetches
// to complete partial block k: from its first missing page to its last.
func (s *BlockStore) fillPagesLocked(k blockKey) (int64, int64) {
	return s.trimPresentLocked(k, 0, s.blockPages(k.c, int64(k.i)))
}

// trimPresentLocked narrows [lo, hi) to start and end with pages block k
// lacks. Present pages in between are fetched again: they hold the same
// bytes (the GET is pinned to the ETag), so rewriting them is harmless.
func (s *BlockStore) trimPresentLocked(k blockKey, lo, hi int64) (int64, int64) {
	m, ok := s.partial[k]
	if !ok {
		return lo, hi
	}
	for lo < hi && m.has(lo) {
		lo++
	}
	for hi > lo && m.has(hi-1) {
		hi--
	}
	return lo, hi
}

// startPagesLocked registers a flight for block i of c and starts a GET
// of its pages [lo, hi) in the background. The block is either missing,
// or cached partially and lacking pages in [lo, hi): then the run holds
// it until it is done, so that it is neither evicted nor punched while
// its pages are written.
func (s *BlockStore) startPagesLocked(c *content, i, lo, hi int64, kind runKind) (*blockRun, error) {
	if s.closed {
		return nil, ErrBlockStoreClosed
	}
	f, err := s.fileLocked(c)
	if err != nil {
		return nil, err
	}
	k := blockKey{c, uint32(i)}
	fl := &flight{done: make(chan struct{})}
	r := &blockRun{c: c, f: f, first: i, flights: []*flight{fl}, background: kind != runRead,
		pages: true, pageLo: lo, pageHi: hi}
	if s.cachedLocked(k) {
		s.acquireLocked(k)
		r.fill = true
	}
	s.flights[k] = fl
	c.refs++
	s.wg.Add(1)
	go s.fetchRun(r)
	return r, nil
}

// publishPagesLocked ends a page run: its pages join the block's (or make
// a new partial block), counted at the bytes they add, and the waiting
// readers each get a hold.
func (s *BlockStore) publishPagesLocked(r *blockRun, err error) {
	c, i := r.c, r.first
	k := blockKey{c, uint32(i)}
	fl := r.flights[0]
	delete(s.flights, k)
	if err != nil {
		fl.err = fmt.Errorf("fetch %q block %d: %w", c.key, i, err)
	} else {
		var m pageMask
		var had int64
		if r.fill {
			// The run's hold kept the block cached; only this run adds
			// pages to it.
			m = s.partial[k]
			had = s.maskLen(c, i, &m)
		}
		m.setRange(r.pageLo, r.pageHi)
		n := s.maskLen(c, i, &m)
		if m.hasRange(0, s.blockPages(c, i)) {
			delete(s.partial, k)
		} else {
			s.partial[k] = m
		}
		s.pending[k] = struct{}{}
		switch {
		case r.fill:
			s.accountLocked(c, 0, n-had)
			if fl.waiters > 0 {
				h := s.held[k]
				h.refs += fl.waiters
				h.seq = s.nextSeqLocked()
				s.held[k] = h
			}
		case fl.waiters > 0:
			s.accountLocked(c, 1, n)
			s.held[k] = blockHold{refs: fl.waiters, seq: s.nextSeqLocked()}
		case c.pinned:
			s.accountLocked(c, 1, n)
			s.pinned[k] = s.nextSeqLocked()
		default:
			s.accountLocked(c, 1, n)
			s.lru.Add(k, lruEntry{seq: s.nextSeqLocked()})
		}
	}
	close(fl.done)
	if r.fill {
		s.releaseLocked(k)
	}
}

// punchFailedPages undoes what a failed page run wrote: the pages of
// [lo, hi) the block lacks. Those present stay, and so do their bytes,
// which the run may have rewritten with the same ones. The run still owns
// the block's flight, so nobody else writes those pages meanwhile.
func (s *BlockStore) punchFailedPages(r *blockRun) {
	var m pageMask
	if r.fill {
		s.mu.Lock()
		m = s.partial[blockKey{r.c, uint32(r.first)}]
		s.mu.Unlock()
	}
	if !punchable(r.c, r.f) {
		return // the same bytes, if any: the file is shared
	}
	base := r.first * s.bs
	for p := r.pageLo; p < r.pageHi; {
		if m.has(p) {
			p++
			continue
		}
		q := p
		for q < r.pageHi && !m.has(q) {
			q++
		}
		if err := punchHole(r.f, base+p*s.page, min((q-p)*s.page, s.blockLen(r.c, r.first)-p*s.page)); err != nil {
			s.log.Debug("punch failed fetch", "key", r.c.key, "off", base+p*s.page, "err", err)
		}
		p = q
	}
}

// absentRuns calls fn for each run [lo, hi) of pages of block i of c
// missing from m.
func (s *BlockStore) absentRuns(c *content, i int64, m *pageMask, fn func(lo, hi int64)) {
	n := s.blockPages(c, i)
	for p := int64(0); p < n; {
		if m.has(p) {
			p++
			continue
		}
		q := p
		for q < n && !m.has(q) {
			q++
		}
		fn(p, q)
		p = q
	}
}
