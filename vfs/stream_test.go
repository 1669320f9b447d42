package vfs

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/dir"
)

// partsDir is the dir store taking multipart parts: uploads are kept in
// memory, and CompleteUpload writes the assembled object with the store's
// conditional Put. It counts its calls.
type partsDir struct {
	*dir.Store
	partSize int64

	mu      sync.Mutex
	next    int
	uploads map[string]map[int][]byte // GUARDED_BY(mu)
	meta    map[string]map[string]string
	calls   map[string]int // GUARDED_BY(mu); by op
}

var _ backend.PartUploader = (*partsDir)(nil)

func newPartsDir(s *dir.Store, partSize int64) *partsDir {
	return &partsDir{Store: s, partSize: partSize, uploads: map[string]map[int][]byte{},
		meta: map[string]map[string]string{}, calls: map[string]int{}}
}

func (p *partsDir) count(op string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[op]
}

func (p *partsDir) open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.uploads)
}

func (p *partsDir) Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string, cond backend.Cond) (backend.ObjectInfo, error) {
	p.mu.Lock()
	p.calls["Put"]++
	p.mu.Unlock()
	return p.Store.Put(ctx, key, body, size, meta, cond)
}

func (p *partsDir) PartSize() int64 { return p.partSize }

func (p *partsDir) CreateUpload(_ context.Context, key string, meta map[string]string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls["CreateUpload"]++
	p.next++
	id := fmt.Sprintf("%s#%d", key, p.next)
	p.uploads[id] = map[int][]byte{}
	p.meta[id] = meta
	return id, nil
}

func (p *partsDir) UploadPart(_ context.Context, key, id string, num int, body io.ReaderAt, off, size int64) (backend.Part, error) {
	b := make([]byte, size)
	if _, err := body.ReadAt(b, off); err != nil {
		return backend.Part{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls["UploadPart"]++
	u := p.uploads[id]
	if u == nil {
		return backend.Part{}, backend.ErrNoUpload
	}
	u[num] = b
	return backend.Part{Num: num, ETag: fmt.Sprint(num), Size: size}, nil
}

func (p *partsDir) CompleteUpload(ctx context.Context, key, id string, parts []backend.Part, cond backend.Cond) (backend.ObjectInfo, error) {
	p.mu.Lock()
	p.calls["CompleteUpload"]++
	u := p.uploads[id]
	var body []byte
	for _, part := range parts {
		body = append(body, u[part.Num]...)
	}
	meta := p.meta[id]
	p.mu.Unlock()
	if u == nil {
		return backend.ObjectInfo{}, backend.ErrNoUpload
	}
	info, err := p.Store.Put(ctx, key, bytes.NewReader(body), int64(len(body)), meta, cond)
	if err == nil {
		p.mu.Lock()
		delete(p.uploads, id)
		p.mu.Unlock()
	}
	return info, err
}

func (p *partsDir) ListUploads(_ context.Context, key string) ([]backend.Upload, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []backend.Upload
	for id := range p.uploads {
		if strings.HasPrefix(id, key+"#") {
			out = append(out, backend.Upload{ID: id, Initiated: time.Now()})
		}
	}
	return out, nil
}

func (p *partsDir) AbortUpload(_ context.Context, _, id string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls["AbortUpload"]++
	delete(p.uploads, id)
	return nil
}

const streamPart = 64 << 10

func randomData(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// waitCount waits until p has seen n calls of op, and fails the test if
// it sees more.
func waitCount(t *testing.T, p *partsDir, op string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for p.count(op) < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := p.count(op); got != n {
		t.Fatalf("%s calls = %d; want %d", op, got, n)
	}
}

// waitNoOpenUploads waits until every early upload was completed or
// aborted (aborts run in the background).
func waitNoOpenUploads(t *testing.T, p *partsDir) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for p.open() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d multipart uploads left open", p.open())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A sequential writer's complete parts go up before close; the upload is
// completed, not sent again, and the object is exact.
func TestStreamWhileWriting(t *testing.T) {
	m := newTier(t, tierOpt{partSize: streamPart})
	data := randomData(t, 3*streamPart+100)
	f, err := os.Create(m.path("big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // on failure: an open file would keep the mount busy
	for off := 0; off < len(data); off += 4096 {
		if _, err := f.Write(data[off:min(off+4096, len(data))]); err != nil {
			t.Fatal(err)
		}
	}
	waitCount(t, m.parts, "UploadPart", 3) // the complete parts, before close
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	m.sync(15 * time.Second)
	m.wantRemote("big.bin", data)
	if c, p, put := m.parts.count("CompleteUpload"), m.parts.count("UploadPart"), m.parts.count("Put"); c != 1 || p != 4 || put != 0 {
		t.Fatalf("CompleteUpload %d, UploadPart %d, Put %d; want 1, 4 (the last after close), 0", c, p, put)
	}
	waitNoOpenUploads(t, m.parts)
}

// A file smaller than one part never starts an upload while written.
func TestStreamNotForSmallFile(t *testing.T) {
	m := newTier(t, tierOpt{partSize: streamPart})
	data := randomData(t, streamPart-1)
	m.mustWrite("small.bin", data)
	m.sync(15 * time.Second)
	m.wantRemote("small.bin", data)
	if n := m.parts.count("CreateUpload"); n != 0 {
		t.Fatalf("CreateUpload calls = %d; want none", n)
	}
}

// A writer that goes back over a part already sent, or truncates, falls
// back to the normal path: the early upload is aborted and the staged file
// is sent by Put, exactly.
func TestStreamFallback(t *testing.T) {
	for name, edit := range map[string]func(t *testing.T, f *os.File, data []byte) []byte{
		"rewrite": func(t *testing.T, f *os.File, data []byte) []byte {
			if _, err := f.WriteAt([]byte("REWRITTEN"), 10); err != nil {
				t.Fatal(err)
			}
			copy(data[10:], "REWRITTEN")
			return data
		},
		"truncate": func(t *testing.T, f *os.File, data []byte) []byte {
			if err := f.Truncate(streamPart + 7); err != nil {
				t.Fatal(err)
			}
			return data[:streamPart+7]
		},
		"hole": func(t *testing.T, f *os.File, data []byte) []byte {
			if _, err := f.WriteAt([]byte("x"), int64(len(data))+5); err != nil {
				t.Fatal(err)
			}
			return append(append(data, make([]byte, 5)...), 'x')
		},
	} {
		t.Run(name, func(t *testing.T) {
			m := newTier(t, tierOpt{partSize: streamPart})
			data := randomData(t, 2*streamPart+10)
			f, err := os.Create(m.path("f.bin"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close() // on failure: an open file would keep the mount busy
			if _, err := f.Write(data); err != nil {
				t.Fatal(err)
			}
			waitCount(t, m.parts, "UploadPart", 2) // the stream's, sent in the background
			want := edit(t, f, data)
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			m.sync(15 * time.Second)
			m.wantRemote("f.bin", want)
			if c, put := m.parts.count("CompleteUpload"), m.parts.count("Put"); c != 0 || put != 1 {
				t.Fatalf("CompleteUpload %d, Put %d; want the file sent once by Put", c, put)
			}
			waitNoOpenUploads(t, m.parts)
		})
	}
}

// A file renamed while written is sent under its new name, by Put.
func TestStreamRenamedWhileWriting(t *testing.T) {
	m := newTier(t, tierOpt{partSize: streamPart})
	data := randomData(t, 2*streamPart+10)
	f, err := os.Create(m.path("a.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // on failure: an open file would keep the mount busy
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(m.path("a.bin"), m.path("b.bin")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	m.sync(15 * time.Second)
	m.wantRemote("b.bin", data)
	m.wantNoRemote("a.bin")
	if c := m.parts.count("CompleteUpload"); c != 0 {
		t.Fatalf("CompleteUpload %d; want none (the upload was for the old name)", c)
	}
	waitNoOpenUploads(t, m.parts)
}
