package journal

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/nimbus-fs/nimbus/backend/faulty"
	"github.com/nimbus-fs/nimbus/integration/wait"
)

// commitsQueued is how many Commit calls wait for the group commit.
func (m *machine) commitsQueued() int {
	m.j.queueMu.Lock()
	defer m.j.queueMu.Unlock()
	return len(m.j.commitQ)
}

// recorded reports whether the DB holds a record for seq.
func (m *machine) recorded(seq uint64) bool {
	var ok bool
	if err := m.db.View(func(tx *bbolt.Tx) error {
		ok = tx.Bucket(opsBucket).Get(seqKey(seq)) != nil
		return nil
	}); err != nil {
		m.t.Error(err)
	}
	return ok
}

// Commits that arrive while another is being recorded share one bbolt
// transaction (one commit, one fsync pair), and each returns only once
// its own record is in the DB.
func TestConcurrentCommitsShareOneTransaction(t *testing.T) {
	const n = 8
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	staged := make([]string, n)
	for i := range n {
		staged[i] = m.file(fmt.Sprintf("content %d", i))
	}
	// An earlier commit is being recorded: the writer lock is held.
	m.j.writeMu.Lock()
	before := m.j.commitTxs.Load()
	var wg sync.WaitGroup
	var mu sync.Mutex
	returned := 0
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Two calls on one key: the later supersedes the earlier,
			// as it would a committed op.
			key := fmt.Sprintf("f%d", i)
			if i == n-1 {
				key = "f0"
			}
			errs[i] = m.j.Commit(Op{Kind: PutFile, Key: key, Staged: staged[i]})
			if errs[i] == nil {
				p, ok := m.j.Pending(key)
				if !ok || !m.recorded(p.Seq) {
					t.Errorf("Commit of %s returned before its record was in the DB", key)
				}
			}
			mu.Lock()
			returned++
			mu.Unlock()
		}()
	}
	wait.Until(t, 10*time.Second, "all commits queued", func() bool { return m.commitsQueued() == n })
	mu.Lock()
	if returned != 0 {
		t.Errorf("%d commits returned while the writer lock was held", returned)
	}
	mu.Unlock()
	m.j.writeMu.Unlock()
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("commit %d: %v", i, err)
		}
	}
	if got := m.j.commitTxs.Load() - before; got != 1 {
		t.Errorf("%d concurrent commits took %d transactions, want 1", n, got)
	}
	m.run()
	m.waitIdle()
	want := map[string]string{}
	for i := range n - 1 {
		want[fmt.Sprintf("f%d", i)] = fmt.Sprintf("content %d", i)
	}
	// f0 holds whichever of its two commits was queued last.
	got := r.files()
	if c := got["f0"]; c != "content 0" && c != fmt.Sprintf("content %d", n-1) {
		t.Errorf("f0 = %q", c)
	}
	want["f0"] = got["f0"]
	r.assertFiles(want)
	m.assertNoStagedLeft()
}

// In a group commit, a call that is invalid on its own (its staged file is
// another call's) fails alone; the others are recorded.
func TestGroupCommitFailsOnlyTheBadCall(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	shared, own := m.file("shared"), m.file("own")
	m.j.writeMu.Lock()
	errs := make([]error, 3)
	var wg sync.WaitGroup
	commit := func(i int, op Op) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.j.Commit(op)
		}()
		wait.Until(t, 10*time.Second, "queued", func() bool { return m.commitsQueued() == i+1 })
	}
	commit(0, Op{Kind: PutFile, Key: "a", Staged: shared})
	commit(1, Op{Kind: PutFile, Key: "b", Staged: shared})
	commit(2, Op{Kind: PutFile, Key: "c", Staged: own})
	m.j.writeMu.Unlock()
	wg.Wait()
	if errs[0] != nil || errs[2] != nil {
		t.Errorf("valid calls failed: %v, %v", errs[0], errs[2])
	}
	if errs[1] == nil || !strings.Contains(errs[1].Error(), "two concurrent commits") {
		t.Errorf("second use of a staged file: %v", errs[1])
	}
	if _, ok := m.j.Pending("b"); ok {
		t.Errorf("the failed call was recorded")
	}
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"a": "shared", "c": "own"})
}

// completionsQueued is how many finished ops wait for the group commit.
func (m *machine) completionsQueued() int {
	m.j.queueMu.Lock()
	defer m.j.queueMu.Unlock()
	return len(m.j.completeQ)
}

// Uploads that finish while the writer lock is held record their
// completions in one transaction. One op waits for two of them (a copy of
// one over the other): its record is resolved by both.
func TestCompletionsShareOneTransaction(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop", func(c *Config) { c.Concurrency = 8 })
	gate := newGate()
	m.hooks.setHooks(func(ctx context.Context, c call) error {
		if c.Op == faulty.OpPut {
			return gate.hold(ctx, c)
		}
		return nil
	}, nil)
	keys := []string{"a", "b", "c", "d", "e"}
	for _, k := range keys {
		m.put(k, "v1 of "+k, Base{})
	}
	m.run()
	for range keys {
		gate.wait(t)
	}
	// b := a (a rename's copy): chained to both uploads in flight.
	m.commit(Op{Kind: Copy, Key: "b", Src: "a", Base: Base{}})
	if p, _ := m.j.Pending("b"); !p.Chained || !p.SrcChained {
		t.Fatalf("copy not chained to both: %+v", p)
	}
	m.j.writeMu.Lock()
	before := m.j.completeTxs.Load()
	gate.release()
	wait.Until(t, 10*time.Second, "all completions queued", func() bool { return m.completionsQueued() == len(keys) })
	m.j.writeMu.Unlock()
	m.waitIdle()
	if got := m.j.completeTxs.Load() - before; got != 2 {
		t.Errorf("5 puts completing at once, then the copy, took %d transactions, want 2", got)
	}
	r.assertFiles(map[string]string{"a": "v1 of a", "b": "v1 of a", "c": "v1 of c", "d": "v1 of d", "e": "v1 of e"})
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v", c)
	}
	m.assertNoStagedLeft()
}

// gateKeys holds every call on the given keys at a gate of its own.
func gateKeys(m *machine, keys ...string) map[string]*gate {
	gates := map[string]*gate{}
	for _, k := range keys {
		gates[k] = newGate()
	}
	m.hooks.setHooks(func(ctx context.Context, c call) error {
		if g := gates[c.Key]; g != nil {
			return g.hold(ctx, c)
		}
		return nil
	}, nil)
	return gates
}

// uploadsHeld puts "v1 of KEY" at each key, runs m, and returns once each
// upload is held at its own gate.
func uploadsHeld(t *testing.T, m *machine, keys ...string) map[string]*gate {
	t.Helper()
	gates := gateKeys(m, keys...)
	for _, k := range keys {
		m.put(k, "v1 of "+k, Base{})
	}
	m.run()
	for _, k := range keys {
		gates[k].wait(t)
	}
	return gates
}

// A finished upload gives its slot back before its completion is
// recorded: with one slot, the next upload starts while the first one
// waits for the writer lock.
func TestAFinishedUploadFreesItsSlotBeforeItIsRecorded(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop", func(c *Config) { c.Concurrency = 1 })
	big := strings.Repeat("x", smallSize+1) // not small: one slot for both
	gates := gateKeys(m, "b")
	m.put("a", "a"+big, Base{})
	m.put("b", "b"+big, Base{})
	m.j.writeMu.Lock()
	locked := true
	defer func() {
		if locked { // a failure below: let the machine stop
			m.j.writeMu.Unlock()
		}
	}()
	m.run()
	wait.Until(t, 10*time.Second, "a's completion queued", func() bool { return m.completionsQueued() == 1 })
	gates["b"].wait(t) // b started while a is not recorded yet
	m.j.writeMu.Unlock()
	locked = false
	gates["b"].release()
	m.waitIdle()
	r.assertFiles(map[string]string{"a": "a" + big, "b": "b" + big})
	m.assertNoStagedLeft()
}

// The first completion lingers while other uploads are in flight, and the
// completions that arrive meanwhile share its transaction.
func TestCompletionsLingerForUploadsInFlight(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop", func(c *Config) { c.Concurrency = 8 })
	lingering, resume := make(chan struct{}, 1), make(chan struct{})
	var resumeOnce sync.Once
	resumeAll := func() { resumeOnce.Do(func() { close(resume) }) }
	defer resumeAll() // a failure below: let the machine stop
	m.j.linger = func() {
		lingering <- struct{}{}
		<-resume
	}
	keys := []string{"a", "b", "c"}
	gates := uploadsHeld(t, m, keys...)
	before := m.j.completeTxs.Load()
	gates["a"].release()
	select {
	case <-lingering:
	case <-time.After(10 * time.Second):
		t.Fatal("a's completion did not linger while b and c were uploading")
	}
	gates["b"].release()
	gates["c"].release()
	wait.Until(t, 10*time.Second, "all completions queued", func() bool { return m.completionsQueued() == len(keys) })
	resumeAll()
	m.waitIdle()
	if got := m.j.completeTxs.Load() - before; got != 1 {
		t.Errorf("3 completions a little apart took %d transactions, want 1", got)
	}
	r.assertFiles(map[string]string{"a": "v1 of a", "b": "v1 of b", "c": "v1 of c"})
	m.assertNoStagedLeft()
}

// A group of completions whose transaction fails puts every op back: each
// runs again, finds its own content in the store (no conflict), and is
// recorded; the slots they gave back are not given back twice.
func TestAFailedCompletionRecordRetriesItsOps(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop", func(c *Config) { c.Concurrency = 8 })
	var fails atomic.Int32
	record := m.j.recordCompletions
	m.j.recordCompletions = func(fn func(*bbolt.Tx) error) error {
		if fails.Add(1) == 1 {
			return errors.New("disk full")
		}
		return record(fn)
	}
	keys := []string{"a", "b", "c"}
	gates := uploadsHeld(t, m, keys...)
	for _, k := range keys {
		gates[k].release() // all three finish at once: one group, which fails
	}
	m.waitIdle()
	if n := fails.Load(); n < 2 {
		t.Fatalf("%d completion transactions, want the failed one and more", n)
	}
	r.assertFiles(map[string]string{"a": "v1 of a", "b": "v1 of b", "c": "v1 of c"})
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v", c)
	}
	m.j.mu.Lock()
	uploading := m.j.uploading
	m.j.mu.Unlock()
	if uploading != 0 {
		t.Errorf("uploading = %d once idle, want 0", uploading)
	}
	m.assertNoStagedLeft()
}
