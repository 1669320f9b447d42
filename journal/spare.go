package journal

import (
	"errors"
	"fmt"
	"os"
	"sync"
)

// Spare staging files.
//
// Creating a file in the staging folder costs about 0.1 to 0.3 ms of kernel
// time here, as much as the fsync a small file's close() pays. A create()
// on the mount asks for its working copy at once (StagingFile), so that
// cost would sit inside every create(). Instead the journal keeps a few
// empty files made ahead by a background goroutine, and StagingFile hands
// one out. A spare is an empty staging file that no record references,
// like one whose caller has not committed yet: a crash leaves it as garbage
// that Open removes, and Close removes the ones left.

// DefaultSpareFiles is Config.SpareFiles when it is zero.
const DefaultSpareFiles = 8

// spares is the pool of ready staging files.
type spares struct {
	mu      sync.Mutex
	files   []*os.File // GUARDED_BY(mu)
	filling bool       // GUARDED_BY(mu): a goroutine is making more
	closed  bool       // GUARDED_BY(mu): the journal closed; make no more
	fills   sync.WaitGroup
}

// take returns a spare file, or nil when none is ready.
func (s *spares) take() *os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.files)
	if n == 0 {
		return nil
	}
	f := s.files[n-1]
	s.files = s.files[:n-1]
	return f
}

// refill starts making spares, up to j.spareFiles, unless that is under way.
func (j *Journal) refill() {
	s := &j.spares
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.filling || s.closed || len(s.files) >= j.spareFiles {
		return
	}
	s.filling = true
	s.fills.Add(1)
	go func() {
		defer s.fills.Done()
		j.fillSpares()
	}()
}

func (j *Journal) fillSpares() {
	s := &j.spares
	for {
		f, err := os.CreateTemp(j.dir, stagedPattern)
		s.mu.Lock()
		switch {
		case err != nil:
			s.filling = false
			s.mu.Unlock()
			// StagingFile creates its own and reports its error.
			j.log.Warn("make spare staging file", "err", err)
			return
		case s.closed:
			s.filling = false
			s.mu.Unlock()
			removeSpare(f)
			return
		}
		s.files = append(s.files, f)
		if len(s.files) >= j.spareFiles {
			s.filling = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

// closeSpares removes the spares left and makes no more.
func (j *Journal) closeSpares() {
	s := &j.spares
	s.mu.Lock()
	s.closed = true
	left := s.files
	s.files = nil
	s.mu.Unlock()
	s.fills.Wait()
	for _, f := range left {
		removeSpare(f)
	}
}

// removeSpare closes and removes an unused spare; one left behind is
// removed at the next Open.
func removeSpare(f *os.File) {
	_ = f.Close() // empty and unused: nothing to flush
	if err := os.Remove(f.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
		_ = err // garbage for the next Open
	}
}

// newStagingFile creates a staging file now.
func (j *Journal) newStagingFile() (*os.File, error) {
	f, err := os.CreateTemp(j.dir, stagedPattern)
	if err != nil {
		return nil, fmt.Errorf("journal: create staging file: %w", err)
	}
	return f, nil
}
