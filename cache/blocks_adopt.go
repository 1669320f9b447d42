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
	a, err := s.claimAdoption(c)
	if err != nil {
		return 0, err
	}
	return a.copy(src)
}

// StartAdopt is Adopt that returns once the blocks to adopt are claimed,
// and copies them in the background: a reader of one of them meanwhile
// waits for it as for a GET, and none is fetched. src must stay readable
// until done is closed (an open file does, even once unlinked); done
// carries the copy's error, if any. Close waits for the copy, which stops
// early once the store closes.
func (s *BlockStore) StartAdopt(c Content, src io.ReaderAt) (done <-chan error, err error) {
	a, err := s.claimAdoption(c)
	if err != nil {
		return nil, err
	}
	ch := make(chan error, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		a.finish(ErrBlockStoreClosed)
		return nil, ErrBlockStoreClosed
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		_, err := a.copy(src)
		ch <- err
	}()
	return ch, nil
}

// adoption is the runs an Adopt claimed, in order, with their lengths.
type adoption struct {
	s    *BlockStore
	key  string
	runs []*blockRun
	lens []int64
	// release drops the reference that kept the content indexed.
	release func()
}

// claimAdoption registers flights for every block of c that is missing
// and fits, and reserves their room.
func (s *BlockStore) claimAdoption(c Content) (*adoption, error) {
	if err := s.validateContent(c); err != nil {
		return nil, fmt.Errorf("adopt %q: %w", c.Key, err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrBlockStoreClosed
	}
	cc := s.contentLocked(c)
	cc.refs++ // keeps cc in the index until the copy ends
	s.mu.Unlock()
	a := &adoption{s: s, key: c.Key, release: func() {
		s.mu.Lock()
		s.unrefLocked(cc)
		s.mu.Unlock()
	}}

	var claimed int64
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
			if !cc.pinned && claimed+n+bl > s.capacity {
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
		if err == nil {
			err = s.reserve(r, n)
			if err != nil {
				s.finishRun(r, n, err)
			}
		}
		if err != nil {
			a.finish(err)
			return nil, fmt.Errorf("adopt %q: %w", c.Key, err)
		}
		a.runs, a.lens = append(a.runs, r), append(a.lens, n)
		claimed += n
		i += count
	}
	return a, nil
}

// copy fills the claimed runs from src, publishing each, and returns the
// bytes adopted. After a failure, or once the store closes, the runs left
// are given up (their readers fetch them).
func (a *adoption) copy(src io.ReaderAt) (int64, error) {
	var adopted int64
	for len(a.runs) > 0 {
		r, n := a.runs[0], a.lens[0]
		var err error
		if a.s.ctx.Err() != nil {
			err = ErrBlockStoreClosed
		} else {
			err = a.s.copyRun(r, src, r.first*a.s.bs, n)
		}
		a.s.finishRun(r, n, err)
		a.runs, a.lens = a.runs[1:], a.lens[1:]
		if err != nil {
			a.finish(err)
			return adopted, fmt.Errorf("adopt %q: %w", a.key, err)
		}
		adopted += n
	}
	a.finish(nil)
	return adopted, nil
}

// finish gives up the runs not copied (with err, or as cancelled) and
// drops the adoption's reference on the content.
func (a *adoption) finish(err error) {
	if err == nil && len(a.runs) > 0 {
		err = errAdoptionStopped
	}
	for i, r := range a.runs {
		a.s.finishRun(r, a.lens[i], err)
	}
	a.runs, a.lens = nil, nil
	if a.release != nil {
		a.release()
		a.release = nil
	}
}

// errAdoptionStopped ends the flights of blocks an adoption did not copy.
var errAdoptionStopped = errors.New("adoption of uploaded content stopped")

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
