package cache

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
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

// LinkAdopt adopts c whole from path, a local file that holds exactly c's
// bytes and that nobody writes again (the staged content of an upload that
// landed), by making that file c's content file: a hard link, so neither a
// copy nor a new inode. It reports false, having done nothing, when c
// already has a file or blocks, is open, does not fit whole, or the link
// fails (another file system); the caller then copies (StartAdopt).
//
// Others may go on reading path's inode (a working copy, or the journal
// replaying the upload after a crash), so such a file is never punched:
// an unused one is evicted whole, and a block evicted while c is open
// keeps its bytes on disk until c goes (see punchable).
func (s *BlockStore) LinkAdopt(c Content, path string) (bool, error) {
	if err := s.validateContent(c); err != nil {
		return false, fmt.Errorf("adopt %q: %w", c.Key, err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false, ErrBlockStoreClosed
	}
	cc := s.contentLocked(c)
	cc.refs++ // keeps cc, and so the link, until the blocks are claimed
	linked := cc.f == nil && cc.blocks == 0 && cc.refs == 1 && !cc.gone() &&
		(cc.pinned || cc.size <= s.capacity) && s.linkLocked(cc, path)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.unrefLocked(cc) // without blocks, retired: the link goes too
		s.mu.Unlock()
	}()
	if !linked {
		return false, nil
	}
	a, err := s.claimAdoption(c)
	if err != nil {
		return true, err
	}
	for i, r := range a.runs {
		s.finishRun(r, a.lens[i], nil)
	}
	a.runs, a.lens = nil, nil
	a.finish(nil)
	return true, nil
}

// linkLocked makes path c's file and opens it. Linking is metadata work,
// like the opening and unlinking of files done under mu.
func (s *BlockStore) linkLocked(c *content, path string) bool {
	if err := os.MkdirAll(filepath.Dir(c.path), 0o700); err != nil {
		return false
	}
	if err := os.Link(path, c.path); err != nil {
		// EEXIST: a file left for c (a pinned content's), EXDEV: the
		// journal on another file system. Copying does as well.
		s.log.Debug("link staged content into the cache", "key", c.key, "err", err)
		return false
	}
	f, err := os.OpenFile(c.path, os.O_RDWR, 0)
	if err != nil {
		if rerr := os.Remove(c.path); rerr != nil {
			s.log.Warn("remove content file", "path", c.path, "err", rerr)
		}
		return false
	}
	c.f, c.shared = f, true
	return true
}

// punchable reports whether holes may be punched in f, c's file: not when
// it is shared with a staged file, by LinkAdopt in this run or as a second
// link left from an earlier one (the journal's, for an upload a crash
// interrupted). Whoever else reads it would read zeros.
func punchable(c *content, f *os.File) bool {
	if c.shared {
		return false
	}
	var st unix.Stat_t
	if err := fileControl(f, func(fd int) error { return unix.Fstat(fd, &st) }); err != nil {
		return false
	}
	return st.Nlink <= 1
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
	if err != nil && punchable(r.c, r.f) {
		if perr := punchHole(r.f, off, n); perr != nil {
			err = errors.Join(err, perr)
		}
	}
	return err
}
