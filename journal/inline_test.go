package journal

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"go.etcd.io/bbolt"
)

// inlineContents returns what journal.inline holds, by sequence number.
func (m *machine) inlineContents() map[uint64]string {
	m.t.Helper()
	out := map[uint64]string{}
	if err := m.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(inlineBucket).ForEach(func(k, v []byte) error {
			out[seqOf(k)] = string(v)
			return nil
		})
	}); err != nil {
		m.t.Fatal(err)
	}
	return out
}

func seqOf(k []byte) uint64 {
	var n uint64
	for _, b := range k {
		n = n<<8 | uint64(b)
	}
	return n
}

// recordSyncs makes m's journal log every fsync of a staged file or of a
// folder it asks for.
func (m *machine) recordSyncs() func() []string {
	var mu sync.Mutex
	var events []string
	m.j.syncFile = func(f *os.File) error {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, "file "+filepath.Base(f.Name()))
		return f.Sync()
	}
	m.j.syncDir = func(path string) error {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, "dir")
		return syncDir(path)
	}
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(events)
	}
}

// A small file's content goes into the record's transaction: neither the
// staged file nor the folder is fsynced, a larger file of the same Commit
// still is, and the DB holds the small content byte for byte.
func TestInlineCommitSyncsOnlyLargeFiles(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop", func(c *Config) { c.InlineLimit = 8 })
	syncs := m.recordSyncs()
	small, empty, large := m.file("tiny"), m.file(""), m.file("larger than eight")
	m.commit(Op{Kind: PutFile, Key: "small", Staged: small}, Op{Kind: PutFile, Key: "empty", Staged: empty})
	if got := syncs(); len(got) != 0 {
		t.Errorf("inline commit synced %q, want nothing", got)
	}
	m.commit(Op{Kind: PutFile, Key: "large", Staged: large})
	if got, want := syncs(), []string{"file " + filepath.Base(large), "dir"}; !slices.Equal(got, want) {
		t.Errorf("syncs = %q, want %q", got, want)
	}
	ps, _ := m.j.Pending("small")
	pe, _ := m.j.Pending("empty")
	pl, _ := m.j.Pending("large")
	got := m.inlineContents()
	if len(got) != 2 || got[ps.Seq] != "tiny" || got[pe.Seq] != "" {
		t.Errorf("inline contents = %v, want %d: tiny and %d: empty", got, ps.Seq, pe.Seq)
	}
	if _, ok := got[pl.Seq]; ok {
		t.Errorf("large content was inlined")
	}
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"small": "tiny", "empty": "", "large": "larger than eight"})
	if got := m.inlineContents(); len(got) != 0 {
		t.Errorf("inline contents left after the uploads: %v", got)
	}
	m.assertNoStagedLeft()
}

// A system crash may lose an unsynced staged file, or leave it torn or
// stale: Open writes it again from the record, and the upload carries
// exactly what Commit acknowledged.
func TestInlineContentSurvivesLostStagedFile(t *testing.T) {
	for _, tc := range []struct {
		name  string
		crash func(path string) error
	}{
		{"lost", os.Remove},
		{"empty", func(p string) error { return os.Truncate(p, 0) }},
		{"torn", func(p string) error { return os.WriteFile(p, []byte("acknowledged\x00\x00\x00\x00garbage"), 0o600) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRemote(t)
			m := newMachine(t, r.root, "laptop")
			m.put("a.txt", "acknowledged content", Base{})
			m.put("b.txt", "untouched", Base{})
			pa, _ := m.j.Pending("a.txt")
			m.kill()
			if err := tc.crash(pa.Staged); err != nil {
				t.Fatal(err)
			}
			m.open()
			// Reads of pending content (vfs) find it at once, before
			// any upload.
			if b, err := os.ReadFile(pa.Staged); err != nil || string(b) != "acknowledged content" {
				t.Fatalf("staged file after Open = %q, %v", b, err)
			}
			m.run()
			m.waitIdle()
			r.assertFiles(map[string]string{"a.txt": "acknowledged content", "b.txt": "untouched"})
			if s := m.j.Stats(); len(s.Parked) != 0 {
				t.Errorf("parked: %+v", s.Parked)
			}
			m.assertNoStagedLeft()
		})
	}
}

// A superseded inline op takes its content out of the DB with its record;
// a record rewritten later (a follower's resolved base) keeps its own.
func TestInlineContentFollowsItsRecord(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	m.put("a.txt", "v1", Base{})
	m.put("a.txt", "v2", Base{}) // supersedes v1 (not uploading)
	p, _ := m.j.Pending("a.txt")
	if got := m.inlineContents(); len(got) != 1 || got[p.Seq] != "v2" {
		t.Fatalf("inline contents = %v, want only %d: v2", got, p.Seq)
	}

	// b2 is chained to b1, which is held mid-upload; b1's completion
	// rewrites b2's record with the new base. b2's own upload is then held
	// until the crash.
	first, second := newGate(), newGate()
	var calls atomic.Int32
	m.hooks.setHooks(func(ctx context.Context, c call) error {
		if c.Key != "b.txt" {
			return nil
		}
		if calls.Add(1) == 1 {
			return first.hold(ctx, c)
		}
		return second.hold(ctx, c)
	}, nil)
	m.put("b.txt", "b1", Base{})
	m.run()
	first.wait(t)
	m.put("b.txt", "b2", Base{})
	pb, _ := m.j.Pending("b.txt")
	if !pb.Chained {
		t.Fatalf("b2 not chained to b1: %+v", pb)
	}
	first.release()
	second.wait(t)
	if q, _ := m.j.Pending("b.txt"); q.Seq != pb.Seq || q.Chained || !q.Base.Exists {
		t.Fatalf("b2 after b1's upload = %+v, want its base resolved", q)
	}
	m.kill()
	if err := os.Remove(pb.Staged); err != nil {
		t.Fatal(err)
	}
	m.hooks.setHooks(nil, nil)
	m.open()
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"a.txt": "v2", "b.txt": "b2"})
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v", c)
	}
	m.assertNoStagedLeft()
}

// A record that says Inline must be read by a nimbus that knows it (version
// 2), and its content must be there.
func TestInlineRecordVersion(t *testing.T) {
	r := record{Seq: 7, Kind: PutFile, Key: "k", Staged: "staged-1", Inline: true}
	v, err := encodeRecord(&r)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(v), `"v":2`) {
		t.Errorf("inline record encoded as %s, want version 2", v)
	}
	if _, err := decodeRecord(seqKey(7), v); err != nil {
		t.Errorf("decode: %v", err)
	}
	bad := strings.Replace(string(v), `"inline":true`, `"inline":false`, 1)
	if _, err := decodeRecord(seqKey(7), []byte(bad)); err == nil {
		t.Errorf("a version 2 record without inline content was accepted")
	}

	// Content missing from journal.inline fails Open with a clear error.
	rem := newRemote(t)
	m := newMachine(t, rem.root, "laptop")
	m.put("a.txt", "data", Base{})
	p, _ := m.j.Pending("a.txt")
	m.kill()
	if err := m.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(inlineBucket).Delete(seqKey(p.Seq)) }); err != nil {
		t.Fatal(err)
	}
	_, err = Open(Config{DB: m.db, Dir: m.stage, Store: m.hooks})
	if err == nil || !strings.Contains(err.Error(), "lost its inline content") {
		t.Errorf("Open = %v, want lost inline content", err)
	}
}
