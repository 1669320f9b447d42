// Package health is a backend decorator that tracks whether the store can be
// reached and, while it cannot, fails calls at once instead of letting each
// one wait for a connection timeout.
//
// The first call that fails with backend.ErrOffline marks the store offline.
// While offline, calls fail immediately with backend.ErrOffline until the
// next probe time; then one call is let through as a probe. A probe that
// succeeds, or fails with any other error (the store answered), marks the
// store online again. Probe intervals back off from MinBackoff to MaxBackoff
// by backend.Backoff (doubling, with jitter).
// Prober runs such probes in the background so that work queued while
// offline (the journal) can resume by itself.
package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
)

// Checker wraps a backend.Backend with online/offline tracking.
type Checker struct {
	inner      backend.Backend
	minBackoff time.Duration
	maxBackoff time.Duration
	now        func() time.Time

	mu           sync.Mutex
	offline      bool             // GUARDED_BY(mu)
	since        time.Time        // GUARDED_BY(mu): when the current state began
	lastErr      error            // GUARDED_BY(mu): the error that made it offline
	backoff      *backend.Backoff // GUARDED_BY(mu): of the probes, from when it went offline
	nextProbe    time.Time        // GUARDED_BY(mu)
	probing      bool             // GUARDED_BY(mu): a probe call is in flight
	onlineNotify chan struct{}    // GUARDED_BY(mu): closed when going online
}

// New wraps b. The store is assumed online until a call says otherwise.
func New(b backend.Backend) *Checker {
	return &Checker{
		inner:        b,
		minBackoff:   time.Second,
		maxBackoff:   30 * time.Second,
		now:          time.Now,
		since:        time.Now(),
		onlineNotify: make(chan struct{}),
	}
}

// SetBackoff changes the probe interval bounds (tests use short ones).
func (c *Checker) SetBackoff(min, max time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.minBackoff, c.maxBackoff = min, max
}

// State is a snapshot for nimbus status.
type State struct {
	Online bool      `json:"online"`
	Since  time.Time `json:"since"`
	Error  string    `json:"error,omitempty"`
}

// State reports whether the store is believed reachable.
func (c *Checker) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := State{Online: !c.offline, Since: c.since}
	if c.offline && c.lastErr != nil {
		s.Error = c.lastErr.Error()
	}
	return s
}

// Online reports whether the store is believed reachable.
func (c *Checker) Online() bool { return c.State().Online }

// WaitOnline returns a channel closed once the store is (or becomes) online.
func (c *Checker) WaitOnline() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.offline {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return c.onlineNotify
}

// MarkOffline records that the store is unreachable without making a call;
// the mount uses it when it starts while the store is down.
func (c *Checker) MarkOffline(err error) {
	c.observe(fmt.Errorf("%w: %v", backend.ErrOffline, err), false)
}

// admit decides whether a call may go out now. It returns the error to fail
// with when not, and whether the call is the probe.
func (c *Checker) admit() (probe bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.offline {
		return false, nil
	}
	if c.probing || c.now().Before(c.nextProbe) {
		return false, fmt.Errorf("%w since %s (retrying): %v", backend.ErrOffline, c.since.Format(time.TimeOnly), c.lastErr)
	}
	c.probing = true
	return true, nil
}

// observe updates the state from a call's outcome.
func (c *Checker) observe(err error, probe bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if probe {
		c.probing = false
	}
	if errors.Is(err, backend.ErrOffline) {
		if !c.offline || probe {
			if !c.offline {
				c.offline = true
				c.since = c.now()
				c.backoff = backend.NewBackoff(c.minBackoff, c.maxBackoff)
			}
			c.nextProbe = c.now().Add(c.backoff.Next())
		}
		c.lastErr = err
		return
	}
	// Cancelled calls say nothing about the store.
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return
	}
	if c.offline {
		c.offline = false
		c.since = c.now()
		c.lastErr = nil
		close(c.onlineNotify)
		c.onlineNotify = make(chan struct{})
	}
}

func (c *Checker) call(fn func() error) error {
	probe, err := c.admit()
	if err != nil {
		return err
	}
	err = fn()
	c.observe(err, probe)
	return err
}

// Probe makes one cheap request (a one-page listing of the root) if a probe
// is due, and reports whether the store is online afterwards.
func (c *Checker) Probe(ctx context.Context) bool {
	err := c.List(ctx, "", func(backend.Page) error { return errStopListing })
	_ = err // the outcome is recorded by observe; only the state matters here
	return c.Online()
}

var errStopListing = errors.New("probe: first page is enough")

// Prober probes with backoff while the store is offline, until ctx ends.
func (c *Checker) Prober(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		due := c.offline && !c.probing && !c.now().Before(c.nextProbe)
		c.mu.Unlock()
		if due {
			c.Probe(ctx)
		}
	}
}

var (
	_ backend.Backend     = (*Checker)(nil)
	_ backend.DeltaPutter = (*Checker)(nil)
)

func (c *Checker) List(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	return c.call(func() error { return c.inner.List(ctx, prefix, fn) })
}

func (c *Checker) ListFlat(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	return c.call(func() error { return c.inner.ListFlat(ctx, prefix, fn) })
}

func (c *Checker) Stat(ctx context.Context, key string) (info backend.ObjectInfo, err error) {
	err = c.call(func() error { info, err = c.inner.Stat(ctx, key); return err })
	return info, err
}

func (c *Checker) Get(ctx context.Context, key string, off, n int64, ifMatch string) (r io.ReadCloser, err error) {
	err = c.call(func() error { r, err = c.inner.Get(ctx, key, off, n, ifMatch); return err })
	return r, err
}

func (c *Checker) Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string, cond backend.Cond) (info backend.ObjectInfo, err error) {
	err = c.call(func() error { info, err = c.inner.Put(ctx, key, body, size, meta, cond); return err })
	return info, err
}

// PutDelta forwards to the wrapped store's PutDelta, or sends the whole
// body with its Put when it has none (see backend.PutDelta); while offline
// it fails at once, like every call.
func (c *Checker) PutDelta(ctx context.Context, key string, body io.ReaderAt, size int64, meta map[string]string, base string, same []backend.Range) (res backend.DeltaResult, err error) {
	err = c.call(func() error { res, err = backend.PutDelta(ctx, c.inner, key, body, size, meta, base, same); return err })
	return res, err
}

func (c *Checker) Copy(ctx context.Context, src, srcETag, dst string, cond backend.Cond) (info backend.ObjectInfo, err error) {
	err = c.call(func() error { info, err = c.inner.Copy(ctx, src, srcETag, dst, cond); return err })
	return info, err
}

func (c *Checker) Delete(ctx context.Context, key, ifMatch string) error {
	return c.call(func() error { return c.inner.Delete(ctx, key, ifMatch) })
}

func (c *Checker) String() string { return c.inner.String() }

// PresignGet delegates to the wrapped store when it can presign.
func (c *Checker) PresignGet(ctx context.Context, key string, expires time.Duration) (string, error) {
	p, ok := c.inner.(backend.Presigner)
	if !ok {
		return "", fmt.Errorf("%s cannot make share links", c.inner)
	}
	return p.PresignGet(ctx, key, expires)
}
