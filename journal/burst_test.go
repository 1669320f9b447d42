package journal

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend/faulty"
)

// burstRun commits a PutFile every 5 ms for d, and returns when each
// commit returned and when the first upload started.
func burstRun(t *testing.T, m *machine, d time.Duration) (commits []time.Time, upload time.Time) {
	t.Helper()
	var mu sync.Mutex
	m.hooks.setHooks(func(ctx context.Context, c call) error {
		mu.Lock()
		defer mu.Unlock()
		if c.Op == faulty.OpPut && upload.IsZero() {
			upload = time.Now()
		}
		return nil
	}, nil)
	m.run()
	start := time.Now()
	for i := 0; time.Since(start) < d; i++ {
		m.put(fmt.Sprintf("f%03d", i), "x", Base{})
		commits = append(commits, time.Now())
		time.Sleep(5 * time.Millisecond)
	}
	m.waitIdle()
	mu.Lock()
	defer mu.Unlock()
	return commits, upload
}

// quietBefore is how long before u the last commit before it was.
func quietBefore(commits []time.Time, u time.Time) time.Duration {
	var prev time.Time
	for _, c := range commits {
		if c.After(u) {
			break
		}
		prev = c
	}
	return u.Sub(prev)
}

// While commits keep coming, due uploads wait for the burst to end.
func TestUploadsWaitForABurstOfCommits(t *testing.T) {
	r := newRemote(t)
	const delay = 100 * time.Millisecond
	m := newMachine(t, r.root, "laptop", func(c *Config) { c.UploadDelay = delay })
	commits, upload := burstRun(t, m, 300*time.Millisecond)
	first := commits[0]
	// The first op was due delay after it was committed, and may be held
	// burstHold delays more. (A loaded machine may pause the stream of
	// commits for burstGap: that ends the burst.)
	holdEnd := first.Add(delay + burstHold*delay)
	if upload.IsZero() {
		t.Fatal("nothing was uploaded")
	}
	last := commits[len(commits)-1] // then waitIdle makes everything due
	if quiet := quietBefore(commits, upload); upload.Before(last) && quiet < burstGap-5*time.Millisecond && upload.Before(holdEnd) {
		t.Errorf("an upload started %s into a burst of commits, %s after the last one (hold ends at %s)",
			upload.Sub(first), quiet, holdEnd.Sub(first))
	}
}

// A burst holds uploads for burstHold delays at most: a program that never
// stops writing still sees its files upload.
func TestBurstHoldIsBounded(t *testing.T) {
	r := newRemote(t)
	const delay = 20 * time.Millisecond
	m := newMachine(t, r.root, "laptop", func(c *Config) { c.UploadDelay = delay })
	commits, upload := burstRun(t, m, 600*time.Millisecond)
	first, last := commits[0], commits[len(commits)-1]
	if upload.IsZero() || !upload.Before(last) {
		t.Errorf("no upload started during a burst of %s (hold: %s)", last.Sub(first), burstHold*delay)
	}
}
