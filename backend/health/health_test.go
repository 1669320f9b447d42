package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
)

// flakyStore answers Stat with err (when set) and counts the calls that
// reached it.
type flakyStore struct {
	backend.Backend // nil: only Stat and List are called
	err             atomic.Pointer[error]
	calls           atomic.Int64
}

func (f *flakyStore) fail(err error) { f.err.Store(&err) }

func (f *flakyStore) result() error {
	f.calls.Add(1)
	if p := f.err.Load(); p != nil {
		return *p
	}
	return nil
}

func (f *flakyStore) Stat(ctx context.Context, key string) (backend.ObjectInfo, error) {
	return backend.ObjectInfo{Key: key}, f.result()
}

func (f *flakyStore) List(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	if err := f.result(); err != nil {
		return err
	}
	return fn(backend.Page{})
}

func (f *flakyStore) PutDelta(ctx context.Context, key string, body io.ReaderAt, size int64, meta map[string]string, base string, same []backend.Range) (backend.DeltaResult, error) {
	return backend.DeltaResult{Sent: size}, f.result()
}

func (f *flakyStore) Get(ctx context.Context, key string, off, n int64, ifMatch string) (io.ReadCloser, error) {
	return nil, f.result()
}

func TestOfflineFailsFastThenProbesBack(t *testing.T) {
	inner := &flakyStore{}
	c := New(inner)
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	c.SetBackoff(time.Second, 4*time.Second)
	ctx := context.Background()

	inner.fail(fmt.Errorf("dial: %w", backend.ErrOffline))
	if _, err := c.Stat(ctx, "k"); !errors.Is(err, backend.ErrOffline) {
		t.Fatalf("first call: %v", err)
	}
	if c.Online() {
		t.Fatal("still online after an offline error")
	}
	// While the backoff runs, calls fail at once without reaching the store.
	for range 10 {
		if _, err := c.Stat(ctx, "k"); !errors.Is(err, backend.ErrOffline) {
			t.Fatalf("call during backoff: %v", err)
		}
	}
	if got := inner.calls.Load(); got != 1 {
		t.Fatalf("%d calls reached the store during backoff, want 1", got)
	}
	// A failed probe doubles the backoff. Each delay is spread by the
	// jitter: the first ends within 1.25 s, the second no sooner than 1.5 s.
	longest := func(d time.Duration) time.Duration {
		return time.Duration(float64(d)*(1+backend.BackoffJitter)) + time.Millisecond
	}
	shortest := func(d time.Duration) time.Duration {
		return time.Duration(float64(d)*(1-backend.BackoffJitter)) - time.Millisecond
	}
	now = now.Add(longest(time.Second))
	if c.Probe(ctx) {
		t.Fatal("probe reported online while the store is down")
	}
	now = now.Add(shortest(2 * time.Second)) // within the doubled backoff
	if _, err := c.Get(ctx, "k", 0, 1, ""); !errors.Is(err, backend.ErrOffline) {
		t.Fatalf("call within doubled backoff: %v", err)
	}
	if got := inner.calls.Load(); got != 2 {
		t.Fatalf("%d calls reached the store, want 2 (the probe)", got)
	}
	// The store comes back: the next probe marks it online and wakes waiters.
	inner.fail(nil)
	wait := c.WaitOnline()
	now = now.Add(longest(2 * time.Second))
	if !c.Probe(ctx) {
		t.Fatal("probe did not see the store back")
	}
	select {
	case <-wait:
	default:
		t.Fatal("WaitOnline not released when the store came back")
	}
	if _, err := c.Stat(ctx, "k"); err != nil {
		t.Fatalf("call after recovery: %v", err)
	}
}

func TestOtherErrorsMeanOnline(t *testing.T) {
	inner := &flakyStore{}
	c := New(inner)
	inner.fail(fmt.Errorf("get: %w", backend.ErrNotFound))
	if _, err := c.Stat(context.Background(), "k"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
	if !c.Online() {
		t.Fatal("a not-found answer means the store answered: must stay online")
	}
	c.MarkOffline(errors.New("boot without network"))
	if st := c.State(); st.Online || st.Error == "" {
		t.Fatalf("MarkOffline: %+v", st)
	}
}

// TestPutDeltaFailsFastOffline: PutDelta reaches the store's own PutDelta
// while online, marks the store offline like any call, and then fails at
// once.
func TestPutDeltaFailsFastOffline(t *testing.T) {
	inner := &flakyStore{}
	c := New(inner)
	ctx := context.Background()
	body := strings.NewReader("0123456789")
	res, err := c.PutDelta(ctx, "k", body, 10, nil, "e", nil)
	if err != nil || res.Sent != 10 || inner.calls.Load() != 1 {
		t.Fatalf("PutDelta = %+v, %v after %d calls; want the store's own answer", res, err, inner.calls.Load())
	}
	inner.fail(fmt.Errorf("dial: %w", backend.ErrOffline))
	if _, err := c.PutDelta(ctx, "k", body, 10, nil, "e", nil); !errors.Is(err, backend.ErrOffline) {
		t.Fatalf("PutDelta to an unreachable store = %v; want ErrOffline", err)
	}
	if c.Online() {
		t.Fatal("still online after PutDelta failed with ErrOffline")
	}
	if _, err := c.PutDelta(ctx, "k", body, 10, nil, "e", nil); !errors.Is(err, backend.ErrOffline) {
		t.Fatalf("PutDelta while offline = %v; want ErrOffline", err)
	}
	if got := inner.calls.Load(); got != 2 {
		t.Fatalf("%d calls reached the store; want 2 (none while offline)", got)
	}
}
