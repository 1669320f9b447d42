package journal

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/faulty"
	"github.com/nimbus-fs/nimbus/integration/wait"
)

func withUploadDelay(d time.Duration) func(*Config) {
	return func(c *Config) { c.UploadDelay = d }
}

// Closes of a file that keeps changing, while the uploader runs, become
// one upload of the newest version, conditioned on the version the edits
// started from; and WaitIdle (nimbus sync) does not wait for the delay.
func TestUploadDelayCoalescesCloses(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("k", "remote original", backend.Cond{}, nil)
	// Long enough that only WaitIdle can start the upload.
	m := newMachine(t, r.root, "laptop", withUploadDelay(time.Hour))
	m.run()
	const n = 10
	for i := 1; i <= n; i++ {
		// The vfs hands the base it knows: e0.
		m.put("k", fmt.Sprintf("version %d", i), Base{Exists: true, ETag: e0.ETag})
	}
	if s := m.j.Stats(); s.Pending != 1 {
		t.Fatalf("pending = %d after %d closes, want 1", s.Pending, n)
	}
	m.waitIdle()
	wantCalls(t, m, "Put k if-match "+e0.ETag)
	r.assertFiles(map[string]string{"k": fmt.Sprintf("version %d", n)})
	e1 := r.stat("k")

	// Again, while the first upload of the next round is held in flight:
	// the closes after it chain to it and coalesce among themselves.
	g := newGate()
	m.hooks.setHooks(func(ctx context.Context, c call) error {
		if c.Op == faulty.OpPut {
			return g.hold(ctx, c)
		}
		return nil
	}, nil)
	m.put("k", "round 2, first", Base{Exists: true, ETag: e1.ETag})
	done := make(chan struct{})
	go func() { defer close(done); m.waitIdle() }()
	g.wait(t) // "round 2, first" is uploading
	for i := 1; i <= n; i++ {
		m.put("k", fmt.Sprintf("round 2, version %d", i), Base{Exists: true, ETag: e1.ETag})
	}
	if s := m.j.Stats(); s.Pending != 2 || s.Uploading != 1 {
		t.Fatalf("stats = %+v, want 2 pending (1 uploading, 1 coalesced)", s)
	}
	g.release()
	<-done
	var first string
	for _, res := range m.resultList() {
		if res.Op.Key == "k" && res.Op.Base.ETag == e1.ETag {
			first = res.Info.ETag
		}
	}
	if first == "" {
		t.Fatalf("no result for the upload on %s: %+v", e1.ETag, m.resultList())
	}
	wantCalls(t, m, "Put k if-match "+e0.ETag, "Put k if-match "+e1.ETag, "Put k if-match "+first)
	r.assertFiles(map[string]string{"k": fmt.Sprintf("round 2, version %d", n)})
	m.assertNoStagedLeft()
}

// Without WaitIdle, a delayed upload starts by itself once the delay is
// over.
func TestUploadDelayEnds(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop", withUploadDelay(20*time.Millisecond))
	m.run()
	m.put("k", "v1", Base{})
	wait.Until(t, 10*time.Second, "the delayed upload", func() bool { return m.hooks.count(faulty.OpPut) == 1 && m.j.Stats().Pending == 0 })
	r.assertFiles(map[string]string{"k": "v1"})
}

// A key committed again soon after its upload started is being rewritten:
// its delay doubles each round, up to the cap; once quiet, it is back to
// the base delay.
func TestUploadDelayGrowsForHotKeys(t *testing.T) {
	// Generous: the next commit must come within 4 delays of the upload.
	const base = 250 * time.Millisecond
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop", withUploadDelay(base))
	m.run()
	delayOf := func(key string, committed time.Time) time.Duration {
		m.j.mu.Lock()
		defer m.j.mu.Unlock()
		q := m.j.keyQ[key]
		return q[len(q)-1].settleUntil.Sub(committed)
	}
	var want time.Duration = base
	b := Base{}
	for round := 1; round <= 3; round++ {
		before := time.Now()
		m.put("hot", fmt.Sprintf("v%d", round), b)
		if d := delayOf("hot", before); d < want || d > want+time.Since(before) {
			t.Fatalf("round %d: delay %v, want %v", round, d, want)
		}
		wait.Until(t, 10*time.Second, "the upload of round "+fmt.Sprint(round), func() bool { return m.j.Stats().Pending == 0 })
		b = Base{Exists: true, ETag: r.stat("hot").ETag}
		want *= 2
	}
	// A key quiet for a while starts over.
	m.j.mu.Lock()
	m.j.keyDelays["hot"].lastStart = time.Now().Add(-time.Hour)
	m.j.mu.Unlock()
	before := time.Now()
	m.put("hot", "after a pause", b)
	if d := delayOf("hot", before); d < base || d > base+time.Since(before) {
		t.Fatalf("after a pause: delay %v, want %v", d, base)
	}
	m.waitIdle()
	r.assertFiles(map[string]string{"hot": "after a pause"})
}
