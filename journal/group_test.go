package journal

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"go.etcd.io/bbolt"
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
	eventually(t, "all commits queued", func() bool { return m.commitsQueued() == n })
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
		eventually(t, "queued", func() bool { return m.commitsQueued() == i+1 })
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
