package journal

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/faulty"
	"github.com/nimbus-fs/nimbus/integration/wait"
)

// Offline: uploads pause with backoff instead of spinning, nothing is
// dropped, and the journal drains by itself once the store is back.
func TestOfflineThenOnlineDrains(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRemote(t)
		m := newMachine(t, r.root, "laptop", func(c *Config) {
			c.MinBackoff = 20 * time.Millisecond
			c.MaxBackoff = 80 * time.Millisecond
		})
		m.faulty.SetOffline(true)
		want := map[string]string{}
		for _, k := range []string{"a", "b", "c", "d", "e", "f"} {
			m.put(k, "content "+k, Base{})
			want[k] = "content " + k
		}
		m.run()
		time.Sleep(400 * time.Millisecond)
		// Spinning would make thousands of calls; backing off from 20ms to
		// 80ms with one probe at a time makes about 8.
		if n := m.hooks.count(""); n == 0 || n > 20 {
			t.Errorf("%d calls in 400ms while offline", n)
		}
		s := m.j.Stats()
		if !s.Offline || s.Pending != 6 || len(s.Parked) != 0 || len(s.Retrying) == 0 ||
			!strings.Contains(s.Retrying[0].Err, "backend unreachable") {
			t.Errorf("stats while offline = %+v", s)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if err := m.j.WaitIdle(ctx); err == nil || !strings.Contains(err.Error(), "the store is unreachable") ||
			!strings.Contains(err.Error(), "backend unreachable") {
			t.Errorf("WaitIdle while offline = %v", err)
		}
		r.assertFiles(map[string]string{})

		m.faulty.SetOffline(false)
		m.waitIdle()
		r.assertFiles(want)
		if s := m.j.Stats(); s.Offline || s.Pending != 0 {
			t.Errorf("stats after drain = %+v", s)
		}
		m.assertNoStagedLeft()
	})
}

// A 409 or an unknown error is retried with backoff, never dropped.
func TestTransientErrorsAreRetried(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	var mu sync.Mutex
	failures := []error{
		fmt.Errorf("put: %w", backend.ErrConflict),
		errors.New("500 internal error"),
		fmt.Errorf("put: %w", backend.ErrConflict),
	}
	m.hooks.setHooks(func(ctx context.Context, c call) error {
		mu.Lock()
		defer mu.Unlock()
		if c.Op == faulty.OpPut && len(failures) > 0 {
			err := failures[0]
			failures = failures[1:]
			return err
		}
		return nil
	}, nil)
	m.put("a", "content", Base{})
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"a": "content"})
	if n := m.hooks.count(faulty.OpPut); n != 4 {
		t.Errorf("%d Puts, want 4 (3 failures, then success)", n)
	}
}

// ErrAccess parks the op: kept with its data, shown, not retried until the
// next Open, while unrelated keys carry on.
func TestAccessDeniedParks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRemote(t)
		m := newMachine(t, r.root, "laptop")
		denied := func(ctx context.Context, c call) error {
			if c.Key == "secret/a" {
				return fmt.Errorf("put %q: %w", c.Key, backend.ErrAccess)
			}
			return nil
		}
		m.hooks.setHooks(denied, nil)
		m.put("secret/a", "private", Base{})
		m.put("secret/a-sibling", "fine", Base{})
		m.run()
		wait.Until(t, 10*time.Second, "the op parked", func() bool { return len(m.j.Stats().Parked) == 1 })
		wait.Until(t, 10*time.Second, "the sibling uploaded", func() bool { return m.j.Stats().Pending == 1 })
		// A later op reading the parked key waits behind it; an unrelated one
		// does not.
		m.commit(Op{Kind: Copy, Key: "secret/b", Src: "secret/a", Base: Base{}})
		m.commit(Op{Kind: Delete, Key: "secret/a-sibling", Base: Base{Exists: true, ETag: r.stat("secret/a-sibling").ETag}})
		wait.Until(t, 10*time.Second, "the delete done", func() bool { return m.j.Stats().Pending == 2 })
		if p, _ := m.j.Pending("secret/b"); !p.SrcChained {
			t.Errorf("copy of the parked file not chained to it: %+v", p)
		}

		s := m.j.Stats()
		if p := s.Parked[0]; p.Key != "secret/a" || !strings.Contains(p.Err, "access denied") || p.Since.IsZero() {
			t.Errorf("parked = %+v", p)
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := m.j.WaitIdle(ctx)
		if !errors.Is(err, ErrParked) || !strings.Contains(err.Error(), `"secret/a"`) || time.Since(start) > time.Second {
			t.Errorf("WaitIdle = %v after %v, want ErrParked at once", err, time.Since(start))
		}
		puts := m.hooks.count(faulty.OpPut)
		synctest.Wait() // a retry that was due would have started
		if n := m.hooks.count(faulty.OpPut); n != puts {
			t.Errorf("a parked op was retried: %d Puts, then %d", puts, n)
		}
		if p, ok := m.j.Pending("secret/a"); !ok || !p.Parked {
			t.Errorf("Pending = %+v, want parked", p)
		}

		// Fixed permissions; the next mount retries.
		m.kill()
		m.hooks.setHooks(nil, nil)
		m.open()
		m.run()
		m.waitIdle()
		r.assertFiles(map[string]string{"secret/a": "private", "secret/b": "private"})
		m.assertNoStagedLeft()
	})
}

func TestInvalidKeyParks(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	m.put("bad/../key", "data", Base{}) // the dir store refuses ".." segments
	m.run()
	wait.Until(t, 10*time.Second, "the op parked", func() bool { return len(m.j.Stats().Parked) == 1 })
	if p := m.j.Stats().Parked[0]; !strings.Contains(p.Err, "invalid key") {
		t.Errorf("parked = %+v", p)
	}
	if files := m.stagedFiles(); len(files) != 1 {
		t.Errorf("the parked op's data is gone: %v", files)
	}
}
