package cache

import (
	"errors"
	"fmt"
	"os"
	"sync"
)

// Whole holds.
//
// FUSE passthrough hands the kernel a content file to read directly: its
// reads no longer reach the block store, so nothing would stop eviction,
// Free or a retirement from punching the bytes out from under them (the
// kernel would then read zeros). HoldWhole therefore takes a read hold on
// every block of a content that is entirely cached, the same hold a pread
// takes for its duration, and keeps it until Release: the blocks leave the
// LRU (and the pinned map), so eviction cannot take them, Free only marks
// them to go at release, and a retirement (Forget) unlinks the file but
// never punches it while its blocks are held. The file is opened again,
// read-only, so that the kernel's reads go through a description of their
// own.
//
// Unpinned contents held whole count against half of Capacity, like
// unread read-ahead: what passthrough readers keep open must leave room
// for the other readers' blocks.

// ErrNotWhole means a content is not entirely cached (or is empty), so it
// cannot be read from its file alone.
var ErrNotWhole = errors.New("content not entirely cached")

// errWholeBudget means holding one more content whole would pin down more
// than the share of Capacity whole holds may take.
var errWholeBudget = errors.New("whole holds would take more than half of the cache")

// WholeHold keeps every block of one entirely cached content in place
// until Release, and gives a read-only file of it.
type WholeHold struct {
	s       *BlockStore
	c       *content
	f       *os.File
	counted int64 // bytes counted in BlockStore.wholeBytes
	once    sync.Once
}

// HoldWhole holds every block of c if c is entirely cached: every block
// is there with all its pages. It fails with an error wrapping ErrNotWhole
// when c is not (or is empty, or holding it would take more than half of
// Capacity), and with ErrBlockStoreClosed after Close.
func (s *BlockStore) HoldWhole(c Content) (*WholeHold, error) {
	if err := s.validateContent(c); err != nil {
		return nil, fmt.Errorf("hold %q: %w", c.Key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrBlockStoreClosed
	}
	cc := s.contents[contentIDOf(c.Key, c.ETag)]
	if cc == nil || cc.gone() || cc.nblocks == 0 || cc.blocks != cc.nblocks || cc.size != c.Size {
		return nil, fmt.Errorf("hold %q: %w", c.Key, ErrNotWhole)
	}
	for i := range uint32(cc.nblocks) {
		k := blockKey{cc, i}
		if _, part := s.partial[k]; part || !s.cachedLocked(k) {
			return nil, fmt.Errorf("hold %q: %w", c.Key, ErrNotWhole)
		}
	}
	var counted int64
	if !cc.pinned {
		counted = cc.size
		if s.wholeBytes+counted > s.capacity/2 {
			return nil, fmt.Errorf("hold %q: %w: %w", c.Key, ErrNotWhole, errWholeBudget)
		}
	}
	// Under mu the path is cc's: a retired content's path may belong to
	// its successor, and cc is live.
	f, err := os.Open(cc.path)
	if err != nil {
		return nil, fmt.Errorf("hold %q: %w", c.Key, err)
	}
	if st, err := f.Stat(); err != nil || st.Size() != cc.size {
		closeQuietly(f)
		if err == nil {
			err = fmt.Errorf("file holds %d bytes, not %d: %w", st.Size(), cc.size, ErrNotWhole)
		}
		return nil, fmt.Errorf("hold %q: %w", c.Key, err)
	}
	for i := range uint32(cc.nblocks) {
		s.acquireLocked(blockKey{cc, i}) // cached, checked above
	}
	cc.refs++
	s.wholeBytes += counted
	s.stats.WholeHolds++
	return &WholeHold{s: s, c: cc, f: f, counted: counted}, nil
}

// File is a read-only file of the held content: exactly its bytes. It is
// closed by Release.
func (w *WholeHold) File() *os.File { return w.f }

// Content is the content held.
func (w *WholeHold) Content() Content {
	return Content{Key: w.c.key, ETag: w.c.etag, Size: w.c.size}
}

// Release gives the blocks back: to the LRU, to the pinned map, or to
// Free if it dropped them meanwhile. Later calls do nothing.
func (w *WholeHold) Release() {
	w.once.Do(func() {
		s := w.s
		s.mu.Lock()
		for i := range uint32(w.c.nblocks) {
			s.releaseLocked(blockKey{w.c, i})
		}
		s.wholeBytes -= w.counted
		s.unrefLocked(w.c)
		s.mu.Unlock()
		closeQuietly(w.f)
	})
}

// closeQuietly closes a file that was only read: nothing can be lost.
func closeQuietly(f *os.File) {
	_ = f.Close() // read-only: a close error loses nothing
}
