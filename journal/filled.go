package journal

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/nimbus-fs/nimbus/backend"
)

// filled reads a partial staged file's content: the staged bytes, and the
// missing ranges from the object that holds them (see Partial). Only the
// ranges actually read are fetched, so an upload that copies the
// unchanged parts server-side downloads only what surrounds the changes.
type filled struct {
	ctx      context.Context
	store    Store
	staged   io.ReaderAt
	from     string
	fromETag string
	missing  []backend.Range // sorted, disjoint

	mu     sync.Mutex
	chunks []fillChunkData // GUARDED_BY(mu), least recently used first
}

func (r *filled) ReadAt(p []byte, off int64) (int, error) {
	n, err := r.staged.ReadAt(p, off)
	if err != nil && err != io.EOF {
		return n, err
	}
	ferr := backend.EachWithin(r.missing, off, off+int64(n), func(m backend.Range) error {
		return r.fetch(p[m.Off-off:m.End()-off], m.Off)
	})
	if ferr != nil {
		return 0, ferr
	}
	return n, err
}

// Small reads of missing bytes (a sender reading its body in 32 KiB pieces,
// and often twice: once to sign it) are served from whole chunks fetched
// once, the last few kept.
const (
	fillChunk  = 4 << 20
	fillChunks = 8
)

// fetch reads len(p) bytes at off from the object holding the missing ones.
func (r *filled) fetch(p []byte, off int64) error {
	if len(p) >= fillChunk {
		return r.get(p, off)
	}
	for len(p) > 0 {
		c, err := r.chunk(off / fillChunk * fillChunk)
		if err != nil {
			return err
		}
		n := copy(p, c.data[off-c.off:])
		if n == 0 {
			return fmt.Errorf("missing bytes of a partial file from %q at %d: %w", r.from, off, io.ErrUnexpectedEOF)
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

type fillChunkData struct {
	off  int64
	data []byte
}

// chunk returns the chunk of the object starting at off, fetching it unless
// it is among the last ones fetched.
func (r *filled) chunk(off int64) (fillChunkData, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, c := range r.chunks {
		if c.off == off {
			// Most recently used last.
			r.chunks = append(append(r.chunks[:i:i], r.chunks[i+1:]...), c)
			return c, nil
		}
	}
	// The chunk may end early: the object (and the file) ends there, and
	// only missing bytes, all within it, are ever read.
	n := int64(fillChunk)
	if last := r.missing[len(r.missing)-1].End(); off+n > last {
		n = last - off
	}
	c := fillChunkData{off: off, data: make([]byte, n)}
	if err := r.get(c.data, off); err != nil {
		return fillChunkData{}, err
	}
	if len(r.chunks) == fillChunks {
		r.chunks = r.chunks[1:]
	}
	r.chunks = append(r.chunks, c)
	return c, nil
}

// get reads exactly len(p) bytes at off from the object.
func (r *filled) get(p []byte, off int64) error {
	body, err := r.store.Get(r.ctx, r.from, off, int64(len(p)), r.fromETag)
	if err != nil {
		return fmt.Errorf("missing bytes of a partial file from %q: %w", r.from, err)
	}
	defer body.Close()
	if _, err := io.ReadFull(body, p); err != nil {
		return fmt.Errorf("missing bytes of a partial file from %q at %d: %w", r.from, off, err)
	}
	return nil
}
