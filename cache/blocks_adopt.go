package cache

import (
	"errors"
	"fmt"
	"io"
)

// Adopt caches c from src, a local file holding exactly c's bytes: the
// staged content an upload just sent, which became version c. Its blocks
// are then clean cached blocks of c like fetched ones (evictable, counted
// in Capacity, persisted), so reading back a file written here costs no
// GET. Blocks already cached or being fetched are left alone. Only what
// fits is kept: the first blocks, up to Capacity (a pinned content takes
// them all). It returns the bytes adopted.
func (s *BlockStore) Adopt(c Content, src io.ReaderAt) (int64, error) {
	if err := s.validateContent(c); err != nil {
		return 0, fmt.Errorf("adopt %q: %w", c.Key, err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return 0, ErrBlockStoreClosed
	}
	cc := s.contentLocked(c)
	cc.refs++ // keeps cc in the index between runs
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.unrefLocked(cc)
		s.mu.Unlock()
	}()

	var adopted int64
	for i := int64(0); i < cc.nblocks; {
		s.mu.Lock()
		if s.closed || cc.gone() {
			s.mu.Unlock()
			break
		}
		for i < cc.nblocks && !s.missingLocked(blockKey{cc, uint32(i)}) {
			i++
		}
		if i == cc.nblocks {
			s.mu.Unlock()
			break
		}
		n, count := int64(0), int64(0)
		for i+count < cc.nblocks && count < s.runBlocks && s.missingLocked(blockKey{cc, uint32(i + count)}) {
			bl := s.blockLen(cc, i+count)
			if !cc.pinned && adopted+n+bl > s.capacity {
				break
			}
			n += bl
			count++
		}
		if count == 0 { // the rest does not fit
			s.mu.Unlock()
			break
		}
		r, err := s.adoptRunLocked(cc, i, count)
		s.mu.Unlock()
		if err != nil {
			return adopted, fmt.Errorf("adopt %q: %w", c.Key, err)
		}
		if err = s.reserve(r, n); err == nil {
			err = s.copyRun(r, src, i*s.bs, n)
		}
		s.finishRun(r, n, err)
		if err != nil {
			return adopted, fmt.Errorf("adopt %q: %w", c.Key, err)
		}
		adopted += n
		i += count
	}
	return adopted, nil
}

// adoptRunLocked registers flights for blocks [first, first+n) of c, all
// missing, for Adopt to fill; readers wait for them as for a GET.
func (s *BlockStore) adoptRunLocked(c *content, first, n int64) (*blockRun, error) {
	f, err := s.fileLocked(c)
	if err != nil {
		return nil, err
	}
	r := &blockRun{c: c, f: f, first: first, flights: make([]*flight, n), adopted: true}
	for j := range n {
		fl := &flight{done: make(chan struct{})}
		r.flights[j] = fl
		s.flights[blockKey{c, uint32(first + j)}] = fl
	}
	c.refs++ // dropped by finishRun
	return r, nil
}

// copyRun copies [off, off+n) of src into r's file, at the same offset.
func (s *BlockStore) copyRun(r *blockRun, src io.ReaderAt, off, n int64) error {
	bufp := s.bufPool.Get().(*[]byte)
	defer s.bufPool.Put(bufp)
	got, err := io.CopyBuffer(io.NewOffsetWriter(r.f, off), io.NewSectionReader(src, off, n), *bufp)
	if err == nil && got < n {
		err = fmt.Errorf("local copy holds %d of %d bytes at %d: %w", got, n, off, io.ErrUnexpectedEOF)
	}
	if err != nil {
		if perr := punchHole(r.f, off, n); perr != nil {
			err = errors.Join(err, perr)
		}
	}
	return err
}
