package cache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// statfsFree returns the bytes that an unprivileged process may still
// write on the file system holding dir. Tests replace it to fake a full
// disk.
var statfsFree = func(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// errUnpinned ends a Pin whose content was unpinned (Unpin, Free) while
// it ran: the user cancelled it.
var errUnpinned = fmt.Errorf("unpinned while being pinned: %w", context.Canceled)

// Pin marks c as pinned and downloads every block of it that is missing,
// with the store's bounded fetch concurrency (parallel ranged GETs, several
// blocks per GET where possible). Pinned blocks are never evicted and do
// not count against Capacity: they are accounted as PinnedBytes.
//
// progress, if not nil, is called (from any goroutine, never holding store
// locks) with the bytes of c newly present since its previous call; the
// first call reports what was present already, so that the calls of a Pin
// that succeeds add up to c.Size.
//
// Pin returns when all of c is present, or with the first error: ctx
// cancellation, backend.ErrOffline, backend.ErrPrecondition when the object
// changed (or Forget dropped c), ErrNoSpace when the disk cannot hold it, a
// context.Canceled error when c is unpinned meanwhile. On error, c stays
// pinned with the blocks already fetched (a later Pin resumes), GETs
// already started complete into the cache, and nothing cached before is
// lost.
func (s *BlockStore) Pin(ctx context.Context, c Content, progress func(n int64)) error {
	if err := s.validateContent(c); err != nil {
		return fmt.Errorf("pin %q: %w", c.Key, err)
	}
	if progress == nil {
		progress = func(int64) {}
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("pin %q: %w", c.Key, ErrBlockStoreClosed)
	}
	cc := s.contentLocked(c)
	cc.refs++
	// Pinning moves blocks out of the LRU only: nothing to merge into it.
	_ = s.setPinnedLocked(cc, true)
	present := cc.bytes
	s.mu.Unlock()

	p := &pinFetch{s: s, c: cc, progress: progress}
	defer p.end()
	if present > 0 {
		progress(present)
	}
	if present == cc.size {
		return nil
	}
	start := time.Now()
	if err := p.reserveSpace(cc.size - present); err != nil {
		return fmt.Errorf("pin %q: %w", c.Key, err)
	}
	if err := p.fetch(ctx); err != nil {
		return fmt.Errorf("pin %q: %w", c.Key, err)
	}
	s.log.Debug("pinned", "key", c.Key, "etag", c.ETag, "fetched", cc.size-present, "dur", time.Since(start))
	return nil
}

// Unpin returns every cached version of key to LRU eviction, in the order
// of their last access, then evicts the least recently used blocks down to
// Capacity.
func (s *BlockStore) Unpin(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var moved []lruItem
	for _, c := range slices.Clone(s.byKey[key]) {
		if !c.pinned {
			continue
		}
		moved = append(moved, s.setPinnedLocked(c, false)...)
		if c.blocks == 0 && c.refs == 0 {
			s.retireLocked(c, nil)
		}
	}
	s.mergeIntoLRULocked(moved)
	s.evictLocked(0)
}

// Free drops every cached block of key now, pinned or not, and unpins it.
// A block being read at this instant is dropped once its readers release
// it. It returns the bytes dropped now. Handles open on key keep working:
// their next reads fetch again.
func (s *BlockStore) Free(key string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var freed int64
	for _, c := range slices.Clone(s.byKey[key]) {
		freed += s.freeLocked(c)
	}
	s.evictLocked(0) // blocks under readers now count against the budget
	return freed
}

// Pinned reports whether any version of key is pinned.
func (s *BlockStore) Pinned(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.byKey[key] {
		if c.pinned {
			return true
		}
	}
	return false
}

// Keys returns, sorted, the keys starting with prefix of which the block
// store holds something: cached blocks of some version, or a pin.
func (s *BlockStore) Keys(prefix string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var keys []string
	for key, cs := range s.byKey {
		if !strings.HasPrefix(key, prefix) {
			continue
		}
		if slices.ContainsFunc(cs, func(c *content) bool { return c.blocks > 0 || c.pinned }) {
			keys = append(keys, key)
		}
	}
	slices.Sort(keys)
	return keys
}

// lruItem is a block on its way into the LRU.
type lruItem struct {
	k blockKey
	e lruEntry
}

// setPinnedLocked flips c's pin state: its bytes change counters, and its
// blocks not being read move between the LRU and the pinned map. Pinning
// also cancels the drop marks Free left on blocks being read. Unpinning
// returns the blocks the caller must put into the LRU, with
// mergeIntoLRULocked, and then enforce the budget; pinning returns none.
// Either way the new state is persisted at the next flush.
func (s *BlockStore) setPinnedLocked(c *content, pinned bool) []lruItem {
	if c.pinned == pinned || c.gone() {
		return nil
	}
	blocks, n := c.blocks, c.bytes
	s.accountLocked(c, -blocks, -n)
	c.pinned = pinned
	s.accountLocked(c, blocks, n)
	s.recordDirty[c] = struct{}{}

	var moved []lruItem
	for _, i := range s.cachedBlocksLocked(c) {
		k := blockKey{c, i}
		if pinned {
			if e, ok := s.lru.Peek(k); ok {
				s.lru.Remove(k)
				if e.ahead {
					s.ahead -= s.blockLen(c, int64(i))
				}
				s.pinned[k] = e.seq
			} else if h, ok := s.held[k]; ok && h.drop {
				h.drop = false
				s.held[k] = h
			}
		} else if seq, ok := s.pinned[k]; ok {
			delete(s.pinned, k)
			moved = append(moved, lruItem{k, lruEntry{seq: seq}})
		}
	}
	return moved
}

// mergeIntoLRULocked puts blocks into the LRU at the places their access
// sequence numbers give them, so that blocks pinned long ago and not read
// since are the first to go. The LRU's order is its entries' sequence
// order, so blocks newer than all of them are simply appended; otherwise
// the list is rebuilt, which is linear in the cache's blocks.
func (s *BlockStore) mergeIntoLRULocked(items []lruItem) {
	if len(items) == 0 {
		return
	}
	bySeq := func(a, b lruItem) int { return cmp.Compare(a.e.seq, b.e.seq) }
	slices.SortFunc(items, bySeq)
	if newest, ok := s.newestSeqLocked(); ok && newest > items[0].e.seq {
		all := make([]lruItem, 0, s.lru.Len()+len(items))
		for _, k := range s.lru.Keys() {
			e, _ := s.lru.Peek(k)
			all = append(all, lruItem{k, e})
		}
		items = append(all, items...)
		slices.SortStableFunc(items, bySeq)
		s.lru.Purge()
	}
	// The block records keep their sequence numbers: nothing to persist
	// but the content records, which setPinnedLocked marked.
	for _, it := range items {
		s.lru.Add(it.k, it.e)
	}
}

// newestSeqLocked returns the sequence number of the most recently used
// LRU entry.
func (s *BlockStore) newestSeqLocked() (uint64, bool) {
	keys := s.lru.Keys()
	if len(keys) == 0 {
		return 0, false
	}
	e, _ := s.lru.Peek(keys[len(keys)-1])
	return e.seq, true
}

// freeLocked drops c's cached blocks, except those being read, which are
// marked to go once released, and unpins c. It returns the bytes dropped.
func (s *BlockStore) freeLocked(c *content) int64 {
	if c.refs == 0 {
		// Nobody has it open, so nothing is held: unlinking the file is
		// the quickest way to give the space back.
		n := c.bytes
		s.retireLocked(c, nil)
		return n
	}
	var freed int64
	var dropped []uint32
	for _, i := range s.cachedBlocksLocked(c) {
		k := blockKey{c, i}
		if h, ok := s.held[k]; ok {
			h.drop = true
			s.held[k] = h
			continue
		}
		if e, ok := s.lru.Peek(k); ok {
			s.lru.Remove(k)
			if e.ahead {
				s.ahead -= s.blockLen(c, int64(i))
			}
		} else {
			delete(s.pinned, k)
		}
		n := s.cachedLenLocked(k)
		delete(s.partial, k)
		s.accountLocked(c, -1, -n)
		s.pending[k] = struct{}{}
		freed += n
		dropped = append(dropped, i)
	}
	s.punchBlocksLocked(c, dropped)
	// Only held blocks are left, and held blocks are not in the pinned
	// map: nothing moves into the LRU.
	s.setPinnedLocked(c, false)
	return freed
}

// punchBlocksLocked punches the given blocks of c, one hole per run of
// consecutive blocks.
func (s *BlockStore) punchBlocksLocked(c *content, blocks []uint32) {
	slices.Sort(blocks)
	for len(blocks) > 0 {
		j := 1
		for j < len(blocks) && blocks[j] == blocks[j-1]+1 {
			j++
		}
		first, last := int64(blocks[0]), int64(blocks[j-1])
		s.punchLocked(c, first*s.bs, last*s.bs+s.blockLen(c, last)-first*s.bs)
		blocks = blocks[j:]
	}
}

// pinFetch is one Pin call downloading the missing blocks of its content.
type pinFetch struct {
	s        *BlockStore
	c        *content // a reference is held on it until end
	progress func(int64)
	pending  int64 // GUARDED_BY(s.mu): this Pin's share of s.pinPending
}

// reserveSpace checks that the cache's file system can take missing more
// bytes, on top of what the Pins already running still have to write and
// a spare margin, and counts them until they arrive. A failure to look at
// the file system is logged and lets the Pin go ahead: the writes would
// still fail with ErrNoSpace.
func (p *pinFetch) reserveSpace(missing int64) error {
	s := p.s
	free, err := statfsFree(s.dir)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.log.Warn("cannot check free space before pinning", "key", p.c.key, "err", err)
	} else if others := s.pinPending; missing+others+pinSpareBytes > free {
		return fmt.Errorf("%w: pinning needs %s, the file system of %s has %s free"+
			" (%s of it taken by other pins in progress, %s kept spare): free some space or pin less",
			ErrNoSpace, inMiB(missing), s.dir, inMiB(free), inMiB(others), inMiB(pinSpareBytes))
	}
	s.pinPending += missing
	p.pending = missing
	return nil
}

// end gives back what is left of the space reservation and the reference
// on the content.
func (p *pinFetch) end() {
	s := p.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pinPending -= p.pending
	p.pending = 0
	s.unrefLocked(p.c)
}

// arrived reports n bytes of the content newly present.
func (p *pinFetch) arrived(n int64) {
	if n == 0 {
		return
	}
	p.s.mu.Lock()
	d := min(n, p.pending)
	p.pending -= d
	p.s.pinPending -= d
	p.s.mu.Unlock()
	p.progress(n)
}

// stateLocked tells whether the Pin can go on.
func (p *pinFetch) stateLocked() error {
	switch {
	case p.s.closed:
		return ErrBlockStoreClosed
	case p.c.gone():
		return p.c.goneErr
	case !p.c.pinned:
		return errUnpinned
	}
	return nil
}

// pinWait is what a Pin waits for: the flights of consecutive blocks
// from first on, of a run it started or of a fetch it joined.
type pinWait struct {
	first   int64
	flights []*flight
}

// maxPinPasses bounds the passes over a content. A pass leaves blocks
// missing only when a read-ahead run it joined gave up for lack of budget
// (it started before the content was pinned), so a second pass is rare
// and a third one never needed.
const maxPinPasses = 3

// fetch downloads the missing blocks of the content until all are present.
func (p *pinFetch) fetch(ctx context.Context) error {
	s, c := p.s, p.c
	for range maxPinPasses {
		if err := p.pass(ctx); err != nil {
			return err
		}
		s.mu.Lock()
		err := p.stateLocked()
		complete := c.bytes == c.size
		s.mu.Unlock()
		if err != nil || complete {
			return err
		}
	}
	return fmt.Errorf("blocks still missing after %d passes", maxPinPasses)
}

// pass goes once over the content, in block order, keeping a window of
// GETs of its own (or joined) in flight: as many as the slots open to
// background work, each up to runBlocks blocks. Waiting for the oldest
// first is enough, as GETs of equal size end roughly in order.
func (p *pinFetch) pass(ctx context.Context) error {
	s := p.s
	window := cap(s.aheadSlots)
	var queue []pinWait
	next := int64(0)
	for {
		for len(queue) < window && next < p.c.nblocks {
			s.mu.Lock()
			w, err := p.nextLocked(&next)
			s.mu.Unlock()
			if err != nil {
				return err
			}
			if w.flights == nil {
				break // nothing else is missing
			}
			queue = append(queue, w)
		}
		if len(queue) == 0 {
			return nil
		}
		w := queue[0]
		queue = queue[1:]
		if err := p.await(ctx, w); err != nil {
			return err
		}
	}
}

// nextLocked finds the first block at or after *next that is not cached,
// and starts a run for it and the missing blocks after it, or joins the
// fetch of it already in flight. It returns no flights when there is no
// such block.
func (p *pinFetch) nextLocked(next *int64) (pinWait, error) {
	s, c := p.s, p.c
	if err := p.stateLocked(); err != nil {
		return pinWait{}, err
	}
	i := *next
	for i < c.nblocks && s.completeLocked(blockKey{c, uint32(i)}) {
		i++
	}
	if i == c.nblocks {
		*next = i
		return pinWait{}, nil
	}
	k := blockKey{c, uint32(i)}
	if fl, ok := s.flights[k]; ok {
		*next = i + 1
		return pinWait{first: i, flights: []*flight{fl}}, nil
	}
	if s.cachedLocked(k) {
		// A partial block, left by a reader that seeked: fetch the rest.
		lo, hi := s.fillPagesLocked(k)
		r, err := s.startPagesLocked(c, i, lo, hi, runPin)
		if err != nil {
			return pinWait{}, err
		}
		*next = i + 1
		return pinWait{first: i, flights: r.flights}, nil
	}
	j := i
	for j+1 < c.nblocks && j+1-i < s.runBlocks && s.missingLocked(blockKey{c, uint32(j + 1)}) {
		j++
	}
	r, err := s.startRunLocked(c, i, j-i+1, runPin)
	if err != nil {
		return pinWait{}, err
	}
	*next = j + 1
	return pinWait{first: i, flights: r.flights}, nil
}

// await waits for the flights of w and reports the blocks that arrived.
// The blocks are pinned on arrival (their content is), so no hold is
// needed to keep them. A read-ahead run that gave up is left to the next
// pass.
func (p *pinFetch) await(ctx context.Context, w pinWait) error {
	var got int64
	defer func() { p.arrived(got) }()
	for j, fl := range w.flights {
		select {
		case <-fl.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		switch {
		case fl.err == nil:
			// The rest of a partial block counts as a whole one: a
			// slight overstatement of the progress.
			got += p.s.blockLen(p.c, w.first+int64(j))
		case errors.Is(fl.err, errNoRoom):
		default:
			return fl.err
		}
	}
	return nil
}

// inMiB renders n in MiB for the one message of this package that reports
// sizes to people (the CLI formats everything else).
func inMiB(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
