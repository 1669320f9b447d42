package journal

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.etcd.io/bbolt"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/faulty"
	"github.com/nimbus-fs/nimbus/integration/wait"
)

func TestUploadStoresContentAndHash(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	m.commit(Op{Kind: PutFile, Key: "docs/a.txt", Staged: m.file("hello"), Base: Base{}, Meta: map[string]string{"mode": "644"}})
	m.run()
	m.waitIdle()

	r.assertFiles(map[string]string{"docs/a.txt": "hello"})
	info := r.stat("docs/a.txt")
	if info.Meta[shaMeta] != shaOf("hello") || info.Meta["mode"] != "644" {
		t.Errorf("meta = %v, want the content hash and mode", info.Meta)
	}
	res := m.resultList()
	if len(res) != 1 || res[0].Info.ETag != info.ETag || res[0].Op.Key != "docs/a.txt" || res[0].Conflict != nil {
		t.Errorf("Applied got %+v, want one result with ETag %s", res, info.ETag)
	}
	if got := m.hooks.log(); !slices.Equal(got, []string{"Put docs/a.txt if-none-match"}) {
		t.Errorf("calls = %q", got)
	}
	m.assertNoStagedLeft()
	if s := m.j.Stats(); s.Pending != 0 || s.PendingBytes != 0 || !s.Oldest.IsZero() {
		t.Errorf("stats after drain = %+v", s)
	}
}

// Commit must fsync every staged file and the staging folder before the
// records are written, and what it returned for survives a restart.
func TestCommitIsDurableBeforeReturn(t *testing.T) {
	r := newRemote(t)
	// Content that is not inlined (inline_test.go has the other case).
	m := newMachine(t, r.root, "laptop", func(c *Config) { c.InlineLimit = -1 })
	a, b := m.file("first"), m.file("second")

	var mu sync.Mutex
	var events []string
	recordsNow := func() int {
		n := 0
		if err := m.db.View(func(tx *bbolt.Tx) error {
			n = tx.Bucket(opsBucket).Stats().KeyN
			return nil
		}); err != nil {
			t.Error(err)
		}
		return n
	}
	m.j.syncFile = func(f *os.File) error {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, "file "+filepath.Base(f.Name()))
		if n := recordsNow(); n != 0 {
			t.Errorf("a record was written before staged file %s was synced", f.Name())
		}
		return f.Sync()
	}
	m.j.syncDir = func(path string) error {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, "dir")
		if n := recordsNow(); n != 0 {
			t.Errorf("a record was written before the staging folder was synced")
		}
		return syncDir(path)
	}
	m.commit(
		Op{Kind: PutFile, Key: "a", Staged: a},
		Op{Kind: PutFile, Key: "b", Staged: b},
	)
	want := []string{"file " + filepath.Base(a), "file " + filepath.Base(b), "dir"}
	if !slices.Equal(events, want) {
		t.Errorf("sync order = %q, want %q", events, want)
	}
	if n := recordsNow(); n != 2 {
		t.Fatalf("%d records after Commit, want 2", n)
	}
	// Both records carry consecutive sequence numbers and one group.
	pa, _ := m.j.Pending("a")
	pb, _ := m.j.Pending("b")
	if pb.Seq != pa.Seq+1 {
		t.Errorf("seqs %d, %d not consecutive", pa.Seq, pb.Seq)
	}

	// Crash now: a new process opens the same DB and folder.
	m.kill()
	m.open()
	for _, k := range []string{"a", "b"} {
		p, ok := m.j.Pending(k)
		if !ok {
			t.Fatalf("op on %q lost by the restart", k)
		}
		if _, err := os.Stat(p.Staged); err != nil {
			t.Fatalf("staged content of %q lost: %v", k, err)
		}
	}
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"a": "first", "b": "second"})
	m.assertNoStagedLeft()
}

func TestSequenceNumbersKeepIncreasing(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	m.put("a", "1", Base{})
	p1, _ := m.j.Pending("a")
	m.run()
	m.waitIdle()
	m.kill()
	m.open()
	m.put("b", "2", Base{})
	p2, _ := m.j.Pending("b")
	if p2.Seq <= p1.Seq {
		t.Errorf("seq %d after a drained log and a restart, not above %d", p2.Seq, p1.Seq)
	}
}

func TestOpenRemovesUnreferencedStagedFiles(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	kept := m.file("committed")
	m.commit(Op{Kind: PutFile, Key: "kept", Staged: kept})
	orphan := m.file("staged, then the process crashed before Commit")
	m.kill()
	m.open()
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("unreferenced staged file survived Open: %v", err)
	}
	if _, err := os.Stat(kept); err != nil {
		t.Errorf("committed staged file removed by Open: %v", err)
	}
}

func TestCommitMovesOutsideFileIn(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	outside := filepath.Join(filepath.Dir(m.stage), "dirty-file")
	if err := os.WriteFile(outside, []byte("content"), 0o600); err != nil {
		t.Fatal(err)
	}
	m.commit(Op{Kind: PutFile, Key: "k", Staged: outside})
	if _, err := os.Stat(outside); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the file was not moved into the staging folder: %v", err)
	}
	p, _ := m.j.Pending("k")
	if filepath.Dir(p.Staged) != m.j.dir || p.Size != 7 || p.SHA256 != shaOf("content") {
		t.Errorf("pending = %+v", p)
	}
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"k": "content"})
}

func TestCommitRejectsBadOps(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	staged := m.file("x")
	for _, op := range []Op{
		{Kind: PutFile, Key: "", Staged: staged},
		{Kind: PutFile, Key: "a"},
		{Kind: PutFile, Key: "a/", Staged: staged},
		{Kind: PutMarker, Key: "a"},
		{Kind: Copy, Key: "a"},
		{Kind: Delete, Key: "a", Base: Base{Exists: true}},
		{Kind: Kind(42), Key: "a"},
	} {
		if err := m.j.Commit(op); err == nil {
			t.Errorf("Commit(%+v) succeeded", op)
		}
	}
	m.commit(Op{Kind: PutFile, Key: "a", Staged: staged})
	if err := m.j.Commit(Op{Kind: PutFile, Key: "b", Staged: staged}); err == nil {
		t.Error("a staged file owned by a pending op was accepted again")
	}
	if s := m.j.Stats(); s.Pending != 1 {
		t.Errorf("pending = %d, want 1", s.Pending)
	}
}

// Ops on one key run strictly in order: the second waits for the first.
func TestSameKeyRunsInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRemote(t)
		m := newMachine(t, r.root, "laptop")
		g := newGate()
		first := true
		var mu sync.Mutex
		m.hooks.setHooks(func(ctx context.Context, c call) error {
			mu.Lock()
			hold := c.Op == faulty.OpPut && first
			first = false
			mu.Unlock()
			if hold {
				return g.hold(ctx, c)
			}
			return nil
		}, nil)
		m.put("k", "v1", Base{})
		m.run()
		g.wait(t)
		m.put("k", "v2", Base{}) // the vfs passes whatever; chaining decides
		synctest.Wait()          // every goroutine that could start an upload has
		if n := m.hooks.count(faulty.OpPut); n != 1 {
			t.Fatalf("%d Puts while the first on the key is in flight, want 1", n)
		}
		g.release()
		m.waitIdle()
		r.assertFiles(map[string]string{"k": "v2"})
		v1 := m.resultList()[0].Info.ETag
		want := []string{"Put k if-none-match", "Put k if-match " + v1}
		if got := m.hooks.log(); !slices.Equal(got, want) {
			t.Errorf("calls = %q, want %q", got, want)
		}
		if len(m.j.Conflicts()) != 0 {
			t.Errorf("conflicts = %+v", m.j.Conflicts())
		}
	})
}

// A rename commits Copy then Delete of the old key: the Delete must wait
// for the Copy although they are on different keys.
func TestRenameDeleteWaitsForCopy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRemote(t)
		old := r.put("old.txt", "payload", backend.Cond{}, nil)
		m := newMachine(t, r.root, "laptop")
		g := newGate()
		m.hooks.setHooks(func(ctx context.Context, c call) error {
			if c.Op == faulty.OpCopy {
				return g.hold(ctx, c)
			}
			return nil
		}, nil)
		m.commit(
			Op{Kind: Copy, Key: "new.txt", Src: "old.txt", SrcETag: old.ETag, Base: Base{}},
			Op{Kind: Delete, Key: "old.txt", Base: Base{Exists: true, ETag: old.ETag}},
		)
		m.run()
		g.wait(t)
		synctest.Wait() // every goroutine that could start an upload has
		if n := m.hooks.count(faulty.OpDelete); n != 0 {
			t.Fatal("the Delete of the old key started before the Copy completed")
		}
		g.release()
		m.waitIdle()
		r.assertFiles(map[string]string{"new.txt": "payload"})
		want := []string{
			"Copy new.txt from old.txt@" + old.ETag + " if-none-match",
			"Delete old.txt if-match " + old.ETag,
		}
		if got := m.hooks.log(); !slices.Equal(got, want) {
			t.Errorf("calls = %q, want %q", got, want)
		}
	})
}

// The ops of one Commit run in order even on unrelated keys: a rename of a
// dirty file uploads the new name before it deletes the old one.
func TestGroupOrdersUnrelatedKeys(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRemote(t)
		old := r.put("old.txt", "v0", backend.Cond{}, nil)
		m := newMachine(t, r.root, "laptop")
		g := newGate()
		m.hooks.setHooks(func(ctx context.Context, c call) error {
			if c.Op == faulty.OpPut {
				return g.hold(ctx, c)
			}
			return nil
		}, nil)
		m.commit(
			Op{Kind: PutFile, Key: "new.txt", Staged: m.file("edited, then renamed")},
			Op{Kind: Delete, Key: "old.txt", Base: Base{Exists: true, ETag: old.ETag}},
		)
		m.put("unrelated.txt", "independent", Base{}) // another Commit: not held back
		m.run()
		g.wait(t)
		g.wait(t)
		synctest.Wait() // every goroutine that could start an upload has
		if n := m.hooks.count(faulty.OpDelete); n != 0 {
			t.Fatal("the Delete of the old name started before the upload of the new one completed")
		}
		g.release()
		m.waitIdle()
		r.assertFiles(map[string]string{"new.txt": "edited, then renamed", "unrelated.txt": "independent"})
		if log := m.hooks.log(); log[len(log)-1] != "Delete old.txt if-match "+old.ETag {
			t.Errorf("calls = %q", log)
		}
	})
}

// Unrelated keys upload in parallel, never more than Concurrency at once
// when they are large (small ones may run beyond it: concurrency_test.go).
func TestUnrelatedKeysUploadInParallelBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRemote(t)
		m := newMachine(t, r.root, "laptop", func(c *Config) { c.Concurrency = 2 })
		g := newGate()
		m.hooks.setHooks(func(ctx context.Context, c call) error { return g.hold(ctx, c) }, nil)
		want := map[string]string{}
		for _, k := range []string{"a", "b", "c", "d"} {
			content := "content of " + k + strings.Repeat(".", smallSize)
			m.put(k, content, Base{})
			want[k] = content
		}
		m.run()
		g.wait(t)
		g.wait(t)
		synctest.Wait() // every goroutine that could start an upload has
		if n := len(g.entered); n != 0 {
			t.Errorf("%d more uploads started beyond Concurrency 2", n)
		}
		if s := m.j.Stats(); s.Uploading != 2 || s.Pending != 4 {
			t.Errorf("stats = %+v, want 2 uploading of 4 pending", s)
		}
		g.release()
		m.waitIdle()
		r.assertFiles(want)
	})
}

// A PutFile supersedes a waiting PutFile of the same key and keeps its
// base; the old staged file goes once the new commit is durable.
func TestCoalescing(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("k", "remote original", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	first := m.file("edit 1")
	m.commit(Op{Kind: PutFile, Key: "k", Staged: first, Base: Base{Exists: true, ETag: e0.ETag}})
	p1, _ := m.j.Pending("k")
	// Whatever base the vfs hands, the chain started at e0.
	m.commit(Op{Kind: PutFile, Key: "k", Staged: m.file("edit 2, longer"), Base: Base{}})

	if _, err := os.Stat(first); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("superseded staged file still there: %v", err)
	}
	s := m.j.Stats()
	if s.Pending != 1 || s.PendingBytes != int64(len("edit 2, longer")) {
		t.Errorf("stats = %+v, want one op of %d bytes", s, len("edit 2, longer"))
	}
	p2, _ := m.j.Pending("k")
	if p2.Base != (Base{Exists: true, ETag: e0.ETag}) || p2.Chained || p2.Seq <= p1.Seq {
		t.Errorf("pending after coalescing = %+v, want base %s", p2, e0.ETag)
	}
	m.kill() // the coalesced state is what was recorded
	m.open()
	m.run()
	m.waitIdle()
	if got := m.hooks.log(); !slices.Equal(got, []string{"Put k if-match " + e0.ETag}) {
		t.Errorf("calls = %q, want one conditional Put", got)
	}
	r.assertFiles(map[string]string{"k": "edit 2, longer"})
	m.assertNoStagedLeft()
}

// A PutFile that supersedes one waiting for an earlier op of its Commit
// takes over its place: it still waits (here, for the folder's marker).
func TestSupersedingKeepsGroupPlace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRemote(t)
		m := newMachine(t, r.root, "laptop")
		g := newGate()
		m.hooks.setHooks(func(ctx context.Context, c call) error {
			if c.Key == "d/" {
				return g.hold(ctx, c)
			}
			return nil
		}, nil)
		m.commit(
			Op{Kind: PutMarker, Key: "d/"},
			Op{Kind: PutFile, Key: "d/f", Staged: m.file("v1")},
		)
		m.run()
		g.wait(t)
		m.put("d/f", "v2", Base{})
		if s := m.j.Stats(); s.Pending != 2 {
			t.Fatalf("pending = %d, want 2 (v2 superseded v1)", s.Pending)
		}
		synctest.Wait() // every goroutine that could start an upload has
		if n := m.hooks.count(faulty.OpPut); n != 1 {
			t.Fatalf("d/f uploaded before the marker of its Commit: %q", m.hooks.log())
		}
		g.release()
		m.waitIdle()
		r.assertFiles(map[string]string{"d/f": "v2"})
	})
}

// A rename of a dirty file followed by an edit of the new name: the first
// PutFile has a group follower (the Delete of the old name), so it is not
// superseded; the edit is chained instead and the Delete still waits.
func TestNoCoalescingAcrossAGroupFollower(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("old", "v0", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.commit(
		Op{Kind: PutFile, Key: "new", Staged: m.file("renamed content")},
		Op{Kind: Delete, Key: "old", Base: Base{Exists: true, ETag: e0.ETag}},
	)
	m.put("new", "renamed then edited", Base{})
	if s := m.j.Stats(); s.Pending != 3 {
		t.Fatalf("pending = %d, want 3 (no coalescing)", s.Pending)
	}
	if p, _ := m.j.Pending("new"); !p.Chained {
		t.Errorf("edit of the new name not chained: %+v", p)
	}
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"new": "renamed then edited"})
	log := m.hooks.log()
	if len(log) != 3 || !strings.HasPrefix(log[0], "Put new if-none-match") {
		t.Errorf("calls = %q", log)
	}
}

// A Delete of a file that was created locally and never uploaded cancels
// both: nothing reaches the store.
func TestDeleteCancelsUnuploadedNewFile(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	staged := m.file("short-lived")
	m.commit(Op{Kind: PutFile, Key: "tmp.txt", Staged: staged, Base: Base{}})
	m.commit(Op{Kind: Delete, Key: "tmp.txt", Base: Base{}})
	if s := m.j.Stats(); s.Pending != 0 {
		t.Errorf("pending = %d, want 0", s.Pending)
	}
	if _, err := os.Stat(staged); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staged file of the cancelled op still there: %v", err)
	}
	m.run()
	m.waitIdle()
	if n := m.hooks.count(""); n != 0 {
		t.Errorf("%d store calls, want none: %q", n, m.hooks.log())
	}
	r.assertFiles(map[string]string{})
}

// A Delete after a waiting PutFile of an existing file replaces it and
// deletes the original version, conditionally.
func TestDeleteReplacesWaitingEdit(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("k", "original", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.put("k", "edited", Base{Exists: true, ETag: e0.ETag})
	m.commit(Op{Kind: Delete, Key: "k", Base: Base{Exists: true, ETag: "stale-from-vfs"}})
	m.run()
	m.waitIdle()
	if got := m.hooks.log(); !slices.Equal(got, []string{"Delete k if-match " + e0.ETag}) {
		t.Errorf("calls = %q", got)
	}
	r.assertFiles(map[string]string{})
	m.assertNoStagedLeft()
}

// Chained bases: edit, upload (in flight), edit again with the stale base
// the vfs saw; the second upload uses the ETag of the first. No conflict.
func TestChainedBases(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("doc", "v0", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	g := newGate()
	m.hooks.setHooks(func(ctx context.Context, c call) error {
		if c.Op == faulty.OpPut && c.Cond.IfMatch == e0.ETag {
			return g.hold(ctx, c)
		}
		return nil
	}, nil)
	m.put("doc", "v1", Base{Exists: true, ETag: e0.ETag})
	m.run()
	g.wait(t)
	p, ok := m.j.Pending("doc")
	if !ok || !p.Uploading {
		t.Fatalf("pending = %+v, want the first edit uploading", p)
	}
	m.put("doc", "v2", p.Base) // stale: e0
	p2, _ := m.j.Pending("doc")
	if !p2.Chained {
		t.Fatalf("second edit not chained: %+v", p2)
	}
	g.release()
	m.waitIdle()
	res := m.resultList()
	if len(res) != 2 {
		t.Fatalf("results = %+v", res)
	}
	want := []string{"Put doc if-match " + e0.ETag, "Put doc if-match " + res[0].Info.ETag}
	if got := m.hooks.log(); !slices.Equal(got, want) {
		t.Errorf("calls = %q, want %q", got, want)
	}
	if res[1].Op.Base != (Base{Exists: true, ETag: res[0].Info.ETag}) {
		t.Errorf("second op's base = %+v, want the first upload's ETag", res[1].Op.Base)
	}
	r.assertFiles(map[string]string{"doc": "v2"})
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v", c)
	}

	// Then: the vfs takes the ETag Applied reported and edits again.
	m.put("doc", "v3", Base{Exists: true, ETag: res[1].Info.ETag})
	m.waitIdle()
	r.assertFiles(map[string]string{"doc": "v3"})
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v", c)
	}
}

// A chain survives a restart: the follower's record points at the op in
// flight, and is resolved when that op completes after the reopen.
func TestChainedBaseSurvivesRestart(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	g := newGate()
	m.hooks.setHooks(func(ctx context.Context, c call) error {
		if c.Op == faulty.OpPut {
			return g.hold(ctx, c)
		}
		return nil
	}, nil)
	m.put("doc", "v1", Base{})
	m.run()
	g.wait(t)
	m.put("doc", "v2", Base{})
	m.kill()
	m.hooks.setHooks(nil, nil)
	m.open()
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"doc": "v2"})
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v", c)
	}
	m.assertNoStagedLeft()
}

// A rename (Copy + Delete) of a file whose upload is in flight: the Copy's
// source ETag and the Delete's base both chain to that upload.
func TestRenameOfFileBeingUploaded(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	g := newGate()
	m.hooks.setHooks(func(ctx context.Context, c call) error {
		if c.Op == faulty.OpPut {
			return g.hold(ctx, c)
		}
		return nil
	}, nil)
	m.put("a", "content", Base{})
	m.run()
	g.wait(t)
	m.commit(
		Op{Kind: Copy, Key: "b", Src: "a", SrcETag: "", Base: Base{}},
		Op{Kind: Delete, Key: "a", Base: Base{}},
	)
	g.release()
	m.waitIdle()
	r.assertFiles(map[string]string{"b": "content"})
	etag := m.resultList()[0].Info.ETag
	want := []string{"Put a if-none-match", "Copy b from a@" + etag + " if-none-match", "Delete a if-match " + etag}
	if got := m.hooks.log(); !slices.Equal(got, want) {
		t.Errorf("calls = %q, want %q", got, want)
	}
}

func TestPutMarker(t *testing.T) {
	r := newRemote(t)
	r.put("exists/", "", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.commit(Op{Kind: PutMarker, Key: "photos/"}, Op{Kind: PutMarker, Key: "exists/"})
	m.run()
	m.waitIdle()
	for _, k := range []string{"photos/", "exists/"} {
		r.stat(k)
	}
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v", c)
	}
}

// rmdir deletes a marker whatever its ETag; a file needs one.
func TestDeleteMarkerWithoutETag(t *testing.T) {
	r := newRemote(t)
	r.put("empty/", "", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	if err := m.j.Commit(Op{Kind: Delete, Key: "file", Base: Base{Exists: true}}); err == nil {
		t.Error("an unconditional delete of a file was accepted")
	}
	m.commit(Op{Kind: Delete, Key: "empty/", Base: Base{Exists: true}})
	m.run()
	m.waitIdle()
	if got := m.hooks.log(); !slices.Equal(got, []string{"Delete empty/"}) {
		t.Errorf("calls = %q", got)
	}
	if _, err := r.store.Stat(context.Background(), "empty/"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("marker still there: %v", err)
	}
}

// mkdir then rmdir before the marker was uploaded: nothing reaches the store.
func TestRmdirCancelsUnuploadedMkdir(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	m.commit(Op{Kind: PutMarker, Key: "d/"})
	m.commit(Op{Kind: Delete, Key: "d/", Base: Base{Exists: true}})
	if s := m.j.Stats(); s.Pending != 0 {
		t.Errorf("pending = %d, want 0", s.Pending)
	}
}

// Stats and WaitIdle say precisely what is pending and why.
func TestStatsAndWaitIdleReport(t *testing.T) {
	r := newRemote(t)
	clock := t0
	var mu sync.Mutex
	m := newMachine(t, r.root, "laptop", func(c *Config) {
		c.Now = func() time.Time {
			mu.Lock()
			defer mu.Unlock()
			clock = clock.Add(time.Minute)
			return clock
		}
	})
	m.put("a", "12345", Base{})
	m.put("b", "1234567890", Base{})
	m.commit(Op{Kind: PutMarker, Key: "d/"})
	s := m.j.Stats()
	if s.Pending != 3 || s.PendingBytes != 15 || !s.Oldest.Equal(t0.Add(time.Minute)) || s.Uploading != 0 {
		t.Errorf("stats = %+v", s)
	}
	under := m.j.PendingUnder("")
	if len(under) != 3 || under[0].Key != "a" || under[1].Key != "b" || under[2].Key != "d/" {
		t.Errorf("PendingUnder = %+v", under)
	}

	g := newGate()
	m.hooks.setHooks(func(ctx context.Context, c call) error {
		if c.Key == "a" {
			return g.hold(ctx, c)
		}
		return nil
	}, nil)
	m.run()
	g.wait(t)
	wait.Until(t, 10*time.Second, "b and d/ uploaded", func() bool { return m.j.Stats().Pending == 1 })
	s = m.j.Stats()
	if s.Uploading != 1 || s.PendingBytes != 5 || !s.Oldest.Equal(t0.Add(time.Minute)) {
		t.Errorf("stats while a uploads = %+v", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err := m.j.WaitIdle(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `put "a": uploading`) ||
		!strings.Contains(err.Error(), "1 change(s) not uploaded (5 bytes)") {
		t.Errorf("WaitIdle = %v", err)
	}
	g.release()
	m.waitIdle()
	if s := m.j.Stats(); s.Pending != 0 || s.Uploading != 0 {
		t.Errorf("stats after drain = %+v", s)
	}
}

func TestCloseStopsRunAndRefusesCommits(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	g := newGate()
	m.hooks.setHooks(func(ctx context.Context, c call) error { return g.hold(ctx, c) }, nil)
	m.put("a", "x", Base{})
	m.run()
	g.wait(t)
	if err := m.j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.j.Commit(Op{Kind: PutMarker, Key: "d/"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Commit after Close = %v, want ErrClosed", err)
	}
	// Still recorded for the next Open.
	m.kill()
	m.hooks.setHooks(nil, nil)
	m.open()
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"a": "x"})
}

// TestGroupsOfOneCommitAreIndependent: ops with different Group values in one
// Commit (a folder rename, file by file) do not wait for each other, while
// each group keeps its own order.
func TestGroupsOfOneCommitAreIndependent(t *testing.T) {
	r := newRemote(t)
	a := r.put("dir/a.txt", "a", backend.Cond{}, nil)
	b := r.put("dir/b.txt", "b", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	g := newGate()
	m.hooks.setHooks(func(ctx context.Context, c call) error {
		if c.Op == faulty.OpCopy && c.Key == "new/a.txt" {
			return g.hold(ctx, c) // group 0 stalls on its first op
		}
		return nil
	}, nil)
	m.commit(
		Op{Kind: Copy, Key: "new/a.txt", Src: "dir/a.txt", SrcETag: a.ETag, Group: 0},
		Op{Kind: Delete, Key: "dir/a.txt", Base: Base{Exists: true, ETag: a.ETag}, Group: 0},
		Op{Kind: Copy, Key: "new/b.txt", Src: "dir/b.txt", SrcETag: b.ETag, Group: 1},
		Op{Kind: Delete, Key: "dir/b.txt", Base: Base{Exists: true, ETag: b.ETag}, Group: 1},
	)
	m.run()
	g.wait(t)
	// Group 1 completes although group 0 is held.
	wait.Until(t, 10*time.Second, "group 1 to run while group 0 is held", func() bool { return m.hooks.count(faulty.OpDelete) >= 1 })
	for _, c := range m.hooks.log() {
		if strings.HasPrefix(c, "Delete dir/a.txt") {
			t.Fatal("group 0's Delete ran before its Copy completed")
		}
	}
	g.release()
	m.waitIdle()
	r.assertFiles(map[string]string{"new/a.txt": "a", "new/b.txt": "b"})
}

func TestGroupOutOfRangeIsRefused(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	err := m.j.Commit(Op{Kind: PutMarker, Key: "d/", Group: 1})
	if err == nil || !strings.Contains(err.Error(), "group 1") {
		t.Fatalf("Commit with Group out of range = %v", err)
	}
}

// TestCopySizeSurvivesRestart: a Copy keeps the size it was committed with
// across a restart, so that the mount can show the destination at its size
// while the copy is still pending; a server-side copy adds no pending bytes.
func TestCopySizeSurvivesRestart(t *testing.T) {
	r := newRemote(t)
	old := r.put("old.txt", "payload", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.commit(
		Op{Kind: Copy, Key: "new.txt", Src: "old.txt", SrcETag: old.ETag, Size: 7, Base: Base{}},
		Op{Kind: Delete, Key: "old.txt", Base: Base{Exists: true, ETag: old.ETag}},
	)
	m.kill()
	m.open()
	p, ok := m.j.Pending("new.txt")
	if !ok || p.Kind != Copy || p.Size != 7 {
		t.Fatalf("pending copy after a restart = %+v %v; want a Copy of 7 bytes", p, ok)
	}
	if st := m.j.Stats(); st.PendingBytes != 0 {
		t.Errorf("pending bytes = %d; a server-side copy sends none", st.PendingBytes)
	}
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"new.txt": "payload"})
}
