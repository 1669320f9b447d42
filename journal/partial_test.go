package journal

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/nimbus-fs/nimbus/backend"
)

// partialV1 is deltaV1 as a partial staged file holds it: only the edited
// byte, zeros where it lacks the rest.
const partialV1 = "\x00\x00\x00\x00\x00X\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// oneBytePartial says that partialV1 lacks all but byte 5, which from holds.
func oneBytePartial(from, etag string) *Partial {
	return &Partial{From: from, FromETag: etag, FromSize: 20, Missing: []Range{{Off: 0, Len: 5}, {Off: 6, Len: 14}}}
}

// A partial file is uploaded whole: the missing bytes come from the object
// that holds them. Its hash names this version, so that a replay knows it.
func TestPartialUploadCompletesTheContent(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("big", deltaV0, backend.Cond{}, nil)
	snap := r.put(".snap/1", deltaV0, backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	p := oneBytePartial(".snap/1", snap.ETag)
	m.commit(Op{Kind: PutFile, Key: "big", Staged: m.file(partialV1), Base: Base{Exists: true, ETag: e0.ETag},
		Delta: oneByteDelta(e0.ETag), Partial: p})
	m.run()
	m.waitIdle()

	r.assertFiles(map[string]string{"big": deltaV1, ".snap/1": deltaV0})
	h := sha256.New()
	if err := hashPartial(h, strings.NewReader(partialV1), int64(len(partialV1)), p); err != nil {
		t.Fatal(err)
	}
	if got, want := r.stat("big").Meta[shaMeta], hex.EncodeToString(h.Sum(nil)); got != want {
		t.Errorf("%s = %q; want the partial file's hash %q", shaMeta, got, want)
	}
	if res := m.resultList(); len(res) != 1 || res[0].Op.Partial == nil || res[0].Op.Partial.From != ".snap/1" {
		t.Errorf("results = %+v; want one carrying the partial description", res)
	}
	m.assertNoStagedLeft()
}

// A remote edit meanwhile: the conflicted copy is the whole local version,
// built from the snapshot although the version it was edited from is gone.
func TestPartialConflictCopyIsWhole(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("big", deltaV0, backend.Cond{}, nil)
	snap := r.put(".snap/1", deltaV0, backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.commit(Op{Kind: PutFile, Key: "big", Staged: m.file(partialV1), Base: Base{Exists: true, ETag: e0.ETag},
		Delta: oneByteDelta(e0.ETag), Partial: oneBytePartial(".snap/1", snap.ETag)})
	r.put("big", "edited on the desktop", backend.Cond{}, nil)
	m.run()
	m.waitIdle()

	copyKey := conflictName("big", "laptop", t0)
	r.assertFiles(map[string]string{"big": "edited on the desktop", copyKey: deltaV1, ".snap/1": deltaV0})
}

// The description survives a restart, and an upload that had reached the
// store before it is recognised rather than made a conflict.
func TestPartialReplayAfterRestart(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("big", deltaV0, backend.Cond{}, nil)
	snap := r.put(".snap/1", deltaV0, backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.commit(Op{Kind: PutFile, Key: "big", Staged: m.file(partialV1), Base: Base{Exists: true, ETag: e0.ETag},
		Partial: oneBytePartial(".snap/1", snap.ETag)})
	p, ok := m.j.Pending("big")
	if !ok || p.Partial == nil {
		t.Fatalf("pending = %+v, %v; want the op with its partial description", p, ok)
	}
	// The upload lands, then the machine dies before recording it.
	r.put("big", deltaV1, backend.Cond{}, map[string]string{shaMeta: p.SHA256})
	m.open()
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"big": deltaV1, ".snap/1": deltaV0})
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v; want none: the version there is ours", c)
	}
}

// Commit refuses a description that does not fit the staged file.
func TestPartialIsChecked(t *testing.T) {
	m := newMachine(t, t.TempDir(), "laptop")
	for name, p := range map[string]*Partial{
		"PastTheEnd":       {From: "s", FromETag: "e", FromSize: 20, Missing: []Range{{Off: 10, Len: 11}}},
		"PastTheSourceEnd": {From: "s", FromETag: "e", FromSize: 8, Missing: []Range{{Off: 5, Len: 4}}},
		"Unsorted":         {From: "s", FromETag: "e", FromSize: 20, Missing: []Range{{Off: 10, Len: 1}, {Off: 0, Len: 1}}},
		"NoSource":         {FromSize: 20, Missing: []Range{{Off: 0, Len: 1}}},
	} {
		t.Run(name, func(t *testing.T) {
			err := m.j.Commit(Op{Kind: PutFile, Key: "big", Staged: m.file(partialV1), Partial: p})
			if err == nil {
				t.Fatal("Commit accepted it")
			}
		})
	}
	if err := m.j.Commit(Op{Kind: Delete, Key: "big", Partial: oneBytePartial("s", "e")}); err == nil {
		t.Error("Commit accepted a partial description on a delete")
	}
}

// getCounter is a Store whose Get serves one object and records each range
// asked.
type getCounter struct {
	Store
	content string
	mu      sync.Mutex
	asked   []string
}

func (g *getCounter) Get(ctx context.Context, key string, off, n int64, ifMatch string) (io.ReadCloser, error) {
	g.mu.Lock()
	g.asked = append(g.asked, fmt.Sprintf("%s %d+%d if %s", key, off, n, ifMatch))
	g.mu.Unlock()
	return io.NopCloser(strings.NewReader(g.content[off : off+n])), nil
}

// Reading a partial file fetches only missing bytes: small reads as whole
// chunks, fetched once however often they are read; large ones exactly.
func TestFilledFetchesOnlyWhatIsRead(t *testing.T) {
	const size = 3 * fillChunk
	remote := make([]byte, size)
	for i := range remote {
		remote[i] = byte('a' + i%26)
	}
	staged := make([]byte, size)
	copy(staged[100:], "LOCAL")
	g := &getCounter{content: string(remote)}
	r := &filled{ctx: context.Background(), store: g, staged: bytes.NewReader(staged), from: "snap", fromETag: "e1",
		missing: []backend.Range{{Off: 0, Len: 100}, {Off: 105, Len: size - 105}}}
	want := append(append(append([]byte(nil), remote[:100]...), "LOCAL"...), remote[105:]...)

	for _, c := range []struct {
		off, n int64
		asked  []string
	}{
		{100, 5, nil},
		{90, 20, []string{"snap 0+4194304 if e1"}},
		{0, 4096, nil}, // the same chunk
		{fillChunk, 2 * fillChunk, []string{fmt.Sprintf("snap %d+%d if e1", fillChunk, 2*fillChunk)}},
		{size - 10, 20, []string{fmt.Sprintf("snap %d+%d if e1", 2*fillChunk, fillChunk)}},
	} {
		g.asked = nil
		p := make([]byte, c.n)
		n, err := r.ReadAt(p, c.off)
		if end := min(c.off+c.n, size); !bytes.Equal(p[:n], want[c.off:end]) || (err != nil && err != io.EOF) {
			t.Errorf("ReadAt(%d, %d) = %d bytes, %v; want %d bytes of the content", c.n, c.off, n, err, end-c.off)
		}
		if fmt.Sprint(g.asked) != fmt.Sprint(c.asked) {
			t.Errorf("ReadAt(%d, %d) fetched %q; want %q", c.n, c.off, g.asked, c.asked)
		}
	}
}
