package journal

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend/faulty"
)

// inFlight runs ops through m with every Put held for a while, and returns
// the most Puts that were in the store at once.
func inFlight(t *testing.T, m *machine, commit func()) int {
	t.Helper()
	var mu sync.Mutex
	now, most := 0, 0
	m.hooks.setHooks(func(ctx context.Context, c call) error {
		if c.Op != faulty.OpPut {
			return nil
		}
		mu.Lock()
		now++
		most = max(most, now)
		mu.Unlock()
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		now--
		mu.Unlock()
		return nil
	}, nil)
	commit()
	m.run()
	m.waitIdle()
	mu.Lock()
	defer mu.Unlock()
	return most
}

// Small uploads (files of at most 1 MiB, folder markers) run up to
// smallFactor times Config.Concurrency at once; large ones stay within it.
func TestSmallUploadsRunBeyondConcurrency(t *testing.T) {
	conc := func(c *Config) { c.Concurrency = 2 }
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop", conc)
	most := inFlight(t, m, func() {
		for i := range 12 {
			m.put(fmt.Sprintf("small/f%02d", i), "x", Base{})
			m.commit(Op{Kind: PutMarker, Key: fmt.Sprintf("small/d%02d/", i)})
		}
	})
	if most != smallFactor*2 {
		t.Errorf("small uploads: %d at once, want %d", most, smallFactor*2)
	}

	big := newMachine(t, r.root, "laptop", conc)
	most = inFlight(t, big, func() {
		for i := range 6 {
			big.put(fmt.Sprintf("big/f%02d", i), strings.Repeat("x", smallSize+1), Base{})
		}
	})
	if most != 2 {
		t.Errorf("uploads of more than %d bytes: %d at once, want 2", smallSize, most)
	}
}
