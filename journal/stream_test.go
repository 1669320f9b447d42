package journal

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/faulty"
)

// testPartSize is the parts' size in these tests: tiny, so a few bytes
// make a multipart upload.
const testPartSize = 4

// partStore is a hookStore that takes parts: uploads are kept in memory
// (they outlive a machine's restart, as S3's do), and CompleteUpload writes
// the assembled object with the store's own conditional Put, so its
// condition is checked exactly as a Put's is. Its calls are recorded as
// "CreateUpload key", "UploadPart key #n", "CompleteUpload key if-…" and
// "AbortUpload key".
type partStore struct {
	*hookStore

	mu      sync.Mutex
	nextID  int
	uploads map[string]*fakeUpload // GUARDED_BY(mu)
}

type fakeUpload struct {
	key     string
	created time.Time
	meta    map[string]string
	parts   map[int][]byte
}

var _ backend.PartUploader = (*partStore)(nil)

func newPartStore(h *hookStore) *partStore {
	return &partStore{hookStore: h, uploads: map[string]*fakeUpload{}}
}

func (s *partStore) PartSize() int64 { return testPartSize }

func (s *partStore) CreateUpload(ctx context.Context, key string, meta map[string]string) (id string, err error) {
	err = s.do(ctx, call{Op: "CreateUpload", Key: key}, func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.nextID++
		id = fmt.Sprintf("up%d", s.nextID)
		s.uploads[id] = &fakeUpload{key: key, created: time.Now(), meta: cloneMeta(meta), parts: map[int][]byte{}}
		return nil
	})
	return id, err
}

func (s *partStore) UploadPart(ctx context.Context, key, id string, num int, body io.ReaderAt, off, size int64) (p backend.Part, err error) {
	err = s.do(ctx, call{Op: "UploadPart", Key: fmt.Sprintf("%s #%d", key, num)}, func() error {
		b := make([]byte, size)
		if _, err := body.ReadAt(b, off); err != nil && !(err == io.EOF && size == 0) {
			return err
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		u := s.uploads[id]
		if u == nil || u.key != key {
			return fmt.Errorf("upload %s: %w", id, backend.ErrNoUpload)
		}
		u.parts[num] = b
		sum := sha256.Sum256(b)
		p = backend.Part{Num: num, ETag: hex.EncodeToString(sum[:8]), Size: size}
		return nil
	})
	return p, err
}

func (s *partStore) CompleteUpload(ctx context.Context, key, id string, parts []backend.Part, cond backend.Cond) (info backend.ObjectInfo, err error) {
	err = s.do(ctx, call{Op: "CompleteUpload", Key: key, Cond: cond}, func() error {
		s.mu.Lock()
		u := s.uploads[id]
		if u == nil || u.key != key {
			s.mu.Unlock()
			return fmt.Errorf("upload %s: %w", id, backend.ErrNoUpload)
		}
		var body []byte
		for i, p := range parts {
			b, ok := u.parts[p.Num]
			sum := sha256.Sum256(b)
			if p.Num != i+1 || !ok || p.ETag != hex.EncodeToString(sum[:8]) {
				s.mu.Unlock()
				return fmt.Errorf("complete %s: part %d is not the one uploaded", id, p.Num)
			}
			body = append(body, b...)
		}
		meta := cloneMeta(u.meta)
		s.mu.Unlock()
		info, err = s.inner.Put(ctx, key, bytes.NewReader(body), int64(len(body)), meta, cond)
		if err == nil {
			s.mu.Lock()
			delete(s.uploads, id)
			s.mu.Unlock()
		}
		return err
	})
	return info, err
}

func (s *partStore) AbortUpload(ctx context.Context, key, id string) error {
	return s.do(ctx, call{Op: "AbortUpload", Key: key}, func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.uploads, id)
		return nil
	})
}

func (s *partStore) ListUploads(ctx context.Context, key string) (ups []backend.Upload, err error) {
	err = s.do(ctx, call{Op: "ListUploads", Key: key}, func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		for id, u := range s.uploads {
			if u.key == key {
				ups = append(ups, backend.Upload{ID: id, Initiated: u.created})
			}
		}
		return nil
	})
	return ups, err
}

// open returns the IDs of the uploads not completed or aborted.
func (s *partStore) open() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for id := range s.uploads {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// newStreamMachine is newMachine over a partStore; reopen it with
// m.open(ps.use).
func newStreamMachine(t *testing.T, root string) (*machine, *partStore) {
	t.Helper()
	var ps *partStore
	m := newMachine(t, root, "laptop", func(c *Config) {
		ps = newPartStore(c.Store.(*hookStore))
		c.Store = ps
	})
	return m, ps
}

// use makes a Config's store ps.
func (s *partStore) use(c *Config) { c.Store = s }

// written is a file written sequentially through a Stream, as the vfs does:
// every complete part is sent as soon as it is written.
type written struct {
	path   string
	stream *Stream
	sha    string
}

// writeStreamed writes content for key into a new staging file, sending
// each complete part through a new Stream, and waits until the parts sent
// while writing have reached the store (or failed).
func writeStreamed(t *testing.T, m *machine, key, content string) written {
	t.Helper()
	f, err := m.j.StagingFile()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	s := m.j.StartStream(f.Name(), key, map[string]string{"nimbus-mode": "644"})
	if s == nil {
		t.Fatal("StartStream = nil over a store that takes parts")
	}
	for n := 1; int64(n)*testPartSize <= int64(len(content)); n++ {
		if !s.Send(n) {
			t.Fatalf("Send(%d) refused", n)
		}
	}
	waitSettled(t, s)
	return written{path: f.Name(), stream: s, sha: shaOf(content)}
}

// waitSettled waits until s has nothing in flight.
func waitSettled(t *testing.T, s *Stream) {
	t.Helper()
	select {
	case <-s.settledChan():
	case <-time.After(10 * time.Second):
		t.Fatal("stream parts never settled")
	}
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// ops returns the calls of the hook log whose op is one of names.
func ops(m *machine, names ...string) []string {
	var out []string
	for _, l := range m.hooks.log() {
		if slices.Contains(names, strings.SplitN(l, " ", 2)[0]) {
			out = append(out, l)
		}
	}
	return out
}

func TestStreamedUploadIsCompleted(t *testing.T) {
	r := newRemote(t)
	m, ps := newStreamMachine(t, r.root)
	content := "0123456789" // parts 0123, 4567, 89
	w := writeStreamed(t, m, "big.bin", content)
	// Parts go in parallel: in any order.
	if got := ops(m, "CreateUpload", "UploadPart"); !slices.Equal(sorted(got), []string{"CreateUpload big.bin", "UploadPart big.bin #1", "UploadPart big.bin #2"}) {
		t.Fatalf("calls while writing = %q; want the upload created and the two complete parts sent", got)
	}
	m.commit(Op{Kind: PutFile, Key: "big.bin", Staged: w.path, Stream: w.stream, SHA256: w.sha, Meta: map[string]string{"nimbus-mtime": "1"}})
	p, _ := m.j.Pending("big.bin")
	if p.SHA256 != w.sha {
		t.Fatalf("pending SHA256 = %s; want the one given", p.SHA256)
	}
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"big.bin": content})
	if got := ops(m, "UploadPart", "CompleteUpload", faulty.OpPut); !slices.Equal(append(sorted(got[:3]), got[3:]...), []string{
		"UploadPart big.bin #1", "UploadPart big.bin #2", "UploadPart big.bin #3", "CompleteUpload big.bin if-none-match"}) {
		t.Fatalf("upload calls = %q; want the last part, then one conditional CompleteUpload, and no Put", got)
	}
	info := r.stat("big.bin")
	if info.Meta["nimbus-mode"] != "644" || info.Meta[tokenMeta] == "" {
		t.Fatalf("object metadata = %v; want the stream's, with its upload token", info.Meta)
	}
	if res := m.resultList(); len(res) != 1 || res[0].Info.ETag != info.ETag || res[0].Op.Meta["nimbus-mtime"] != "1" {
		t.Fatalf("results = %+v", res)
	}
	if open := ps.open(); len(open) != 0 {
		t.Fatalf("uploads left open: %v", open)
	}
	m.assertNoStagedLeft()
}

// A remote change made while the file was written: the conditional
// completion is refused, the early upload aborted, and our content goes to
// a conflicted copy, sent whole.
func TestStreamedUploadConflict(t *testing.T) {
	r := newRemote(t)
	v0 := r.put("doc.bin", "remote v0", backend.Cond{}, nil)
	m, ps := newStreamMachine(t, r.root)
	w := writeStreamed(t, m, "doc.bin", "local version 1")
	r.put("doc.bin", "remote v1", backend.Cond{}, nil) // meanwhile, elsewhere
	m.commit(Op{Kind: PutFile, Key: "doc.bin", Staged: w.path, Stream: w.stream, SHA256: w.sha, Base: Base{Exists: true, ETag: v0.ETag}})
	m.run()
	m.waitIdle()
	copyName := conflictNameN("doc.bin", "laptop", t0, 1)
	r.assertFiles(map[string]string{"doc.bin": "remote v1", copyName: "local version 1"})
	if got := ops(m, "CompleteUpload", "AbortUpload"); !slices.Equal(got, []string{"CompleteUpload doc.bin if-match " + v0.ETag, "AbortUpload doc.bin"}) {
		t.Fatalf("calls = %q; want the refused completion, then the abort", got)
	}
	if open := ps.open(); len(open) != 0 {
		t.Fatalf("uploads left open: %v", open)
	}
	if c := m.j.Conflicts(); len(c) != 1 || c[0].ConflictKey != copyName {
		t.Fatalf("conflicts = %+v", c)
	}
}

// An early upload that vanished (a lifecycle rule) is no loss: the staged
// file is sent by Put.
func TestStreamedUploadGoneFallsBack(t *testing.T) {
	r := newRemote(t)
	m, ps := newStreamMachine(t, r.root)
	content := "abcdefghijkl"
	w := writeStreamed(t, m, "f.bin", content)
	for _, id := range ps.open() {
		if err := ps.AbortUpload(context.Background(), "f.bin", id); err != nil {
			t.Fatal(err)
		}
	}
	m.commit(Op{Kind: PutFile, Key: "f.bin", Staged: w.path, Stream: w.stream, SHA256: w.sha})
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"f.bin": content})
	if n := m.hooks.count(faulty.OpPut); n != 1 {
		t.Fatalf("Puts = %d; want the staged file sent once: %q", n, m.hooks.log())
	}
}

// A kill between close (the commit) and the completion: after the restart
// the upload is completed from the record, sending only the parts it does
// not list.
func TestStreamKillBetweenCloseAndCompletion(t *testing.T) {
	r := newRemote(t)
	m, ps := newStreamMachine(t, r.root)
	content := "0123456789ABC" // three full parts and one byte
	w := writeStreamed(t, m, "k.bin", content)
	m.commit(Op{Kind: PutFile, Key: "k.bin", Staged: w.path, Stream: w.stream, SHA256: w.sha})
	waitSettled(t, w.stream)
	m.kill() // before Run ever started

	before := len(ops(m, "UploadPart"))
	m.open(ps.use)
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"k.bin": content})
	after := ops(m, "UploadPart", "CompleteUpload", faulty.OpPut)[before:]
	// The record lists parts 1 to 3 (sent while writing); the last one
	// was sent after the commit, so the replay sends it again.
	if !slices.Equal(after, []string{"UploadPart k.bin #4", "CompleteUpload k.bin if-none-match"}) {
		t.Fatalf("calls after the restart = %q; want part 4 again and the completion", after)
	}
	if open := ps.open(); len(open) != 0 {
		t.Fatalf("uploads left open: %v", open)
	}
	m.assertNoStagedLeft()
}

// A kill while the file is being written (no commit): nothing of it was
// promised; its early upload is aborted when the journal runs again.
func TestStreamKillMidWriteAbortsUpload(t *testing.T) {
	r := newRemote(t)
	m, ps := newStreamMachine(t, r.root)
	writeStreamed(t, m, "w.bin", "0123456789")
	if len(ps.open()) != 1 {
		t.Fatalf("open uploads = %v; want the stream's", ps.open())
	}
	m.kill()
	m.open(ps.use)
	m.run()
	deadline := time.Now().Add(10 * time.Second)
	for len(ps.open()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("uploads left open after the restart: %v", ps.open())
		}
		time.Sleep(10 * time.Millisecond)
	}
	m.waitIdle()
	r.assertFiles(map[string]string{})
	m.assertNoStagedLeft()
}

// A streamed op superseded before its upload (the file closed and written
// again within the upload delay): its early upload is aborted, and the
// newer content goes up.
func TestStreamSupersededIsAborted(t *testing.T) {
	r := newRemote(t)
	m, ps := newStreamMachine(t, r.root)
	m.j.uploadDelay = time.Hour
	w := writeStreamed(t, m, "s.bin", "first version")
	m.commit(Op{Kind: PutFile, Key: "s.bin", Staged: w.path, Stream: w.stream, SHA256: w.sha})
	m.put("s.bin", "second", Base{})
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"s.bin": "second"})
	if open := ps.open(); len(open) != 0 {
		t.Fatalf("uploads left open: %v", open)
	}
	if n := len(ops(m, "CompleteUpload")); n != 0 {
		t.Fatalf("CompleteUpload calls = %d; want none for the superseded version", n)
	}
}

// A stream whose file shrank below the parts it sent (a truncate the
// caller did not report) is not used: the staged file is sent whole.
func TestStreamNotUsedWhenFileShrank(t *testing.T) {
	r := newRemote(t)
	m, ps := newStreamMachine(t, r.root)
	w := writeStreamed(t, m, "t.bin", "0123456789")
	if err := os.Truncate(w.path, 3); err != nil {
		t.Fatal(err)
	}
	m.commit(Op{Kind: PutFile, Key: "t.bin", Staged: w.path, Stream: w.stream})
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"t.bin": "012"})
	if n := len(ops(m, "CompleteUpload")); n != 0 {
		t.Fatalf("CompleteUpload calls = %d; want none", n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(ps.open()) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if open := ps.open(); len(open) != 0 {
		t.Fatalf("uploads left open: %v", open)
	}
}

func TestStreamCommitRefusesBadOps(t *testing.T) {
	r := newRemote(t)
	m, _ := newStreamMachine(t, r.root)
	w := writeStreamed(t, m, "x.bin", "0123456789")
	for name, op := range map[string]Op{
		"other key": {Kind: PutFile, Key: "y.bin", Staged: m.file("a"), Stream: w.stream},
		"bad hash":  {Kind: PutFile, Key: "x.bin", Staged: m.file("a"), SHA256: "xyz"},
		"delta":     {Kind: PutFile, Key: "x.bin", Staged: m.file("a"), Stream: w.stream, Base: Base{Exists: true, ETag: "e"}, Delta: &Delta{SrcETag: "e", Same: []Range{{Off: 0, Len: 1}}}},
		"marker":    {Kind: PutMarker, Key: "d/", SHA256: w.sha},
	} {
		if err := m.j.Commit(op); err == nil {
			t.Errorf("%s: Commit succeeded", name)
		}
	}
	if !w.stream.Broken() {
		t.Error("a Commit that failed did not abort the stream it took over")
	}
}

// Over a store that takes no parts, no stream starts.
func TestNoStreamOverStoreWithoutParts(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	f, err := m.j.StagingFile()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if s := m.j.StartStream(f.Name(), "k", nil); s != nil {
		t.Fatal("StartStream over the dir store returned a stream")
	}
}

// While the store is offline, no stream starts: the file uploads the
// normal way once the store is back.
func TestNoStreamWhileOffline(t *testing.T) {
	r := newRemote(t)
	m, ps := newStreamMachine(t, r.root)
	m.j.mu.Lock()
	m.j.outage.offline = true
	m.j.mu.Unlock()
	f, err := m.j.StagingFile()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if s := m.j.StartStream(f.Name(), "k", nil); s != nil {
		t.Fatal("StartStream while offline returned a stream")
	}
	if n := len(ops(m, "CreateUpload")); n != 0 || len(ps.open()) != 0 {
		t.Fatalf("CreateUpload calls = %d while offline", n)
	}
}

// A kill while the upload is being created (it exists at the store, but
// the journal never learned its ID): the restart finds it by its key and
// time, and aborts it.
func TestStreamKillDuringCreationAbortsUpload(t *testing.T) {
	r := newRemote(t)
	m, ps := newStreamMachine(t, r.root)
	created := newGate()
	t.Cleanup(created.release)
	m.hooks.setHooks(nil, func(ctx context.Context, c call, err error) error {
		if c.Op == "CreateUpload" && err == nil {
			if herr := created.hold(ctx, c); herr != nil {
				return herr
			}
			return fmt.Errorf("the answer is lost in the crash")
		}
		return err
	})
	f, err := m.j.StagingFile()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if s := m.j.StartStream(f.Name(), "c.bin", nil); s == nil {
		t.Fatal("StartStream = nil")
	}
	created.wait(t)
	if len(ps.open()) != 1 {
		t.Fatalf("open uploads = %v; want the one being created", ps.open())
	}
	m.kill()
	m.hooks.setHooks(nil, nil)
	m.open(ps.use)
	m.run()
	deadline := time.Now().Add(10 * time.Second)
	for len(ps.open()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("uploads left open after the restart: %v; calls %q", ps.open(), m.hooks.log())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := ops(m, "ListUploads"); !slices.Equal(got, []string{"ListUploads c.bin"}) {
		t.Fatalf("ListUploads calls = %q; want one for the key", got)
	}
}

// TestStreamStartsWriteBackOfEachPart: each part handed to a Stream has its
// disk write-back started at once, so that the fsync of close() finds
// little left to write; the last part, not handed over before the commit,
// is left to that fsync.
func TestStreamStartsWriteBackOfEachPart(t *testing.T) {
	r := newRemote(t)
	m, _ := newStreamMachine(t, r.root)
	type span struct{ off, size int64 }
	got := make(chan span, 8)
	m.j.startWriteBack = func(f *os.File, off, size int64) error {
		got <- span{off, size}
		return nil
	}
	w := writeStreamed(t, m, "big.bin", "0123456789") // parts 0123, 4567, 89
	var spans []span
	for range 2 {
		select {
		case s := <-got:
			spans = append(spans, s)
		case <-time.After(10 * time.Second):
			t.Fatalf("write-back started for %v; want both parts handed over", spans)
		}
	}
	slices.SortFunc(spans, func(a, b span) int { return int(a.off - b.off) })
	if want := []span{{0, testPartSize}, {testPartSize, testPartSize}}; !slices.Equal(spans, want) {
		t.Fatalf("write-back started for %v; want %v", spans, want)
	}
	m.commit(Op{Kind: PutFile, Key: "big.bin", Staged: w.path, Stream: w.stream, SHA256: w.sha})
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"big.bin": "0123456789"})
	select {
	case s := <-got:
		t.Fatalf("write-back started for %v after the commit; the commit's fsync covers the rest", s)
	default:
	}
}

// TestStartWriteBack: the kernel takes the request for a file's range, and
// a closed file is refused with an error rather than a stray descriptor.
func TestStartWriteBack(t *testing.T) {
	f, err := os.Create(t.TempDir() + "/f")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := startWriteBack(f, 0, 1<<20); err != nil {
		t.Fatalf("startWriteBack: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := startWriteBack(f, 0, 1<<20); err == nil {
		t.Fatal("startWriteBack of a closed file: no error")
	}
}
