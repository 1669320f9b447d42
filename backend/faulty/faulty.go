// Package faulty is a Backend decorator that injects failures, for tests:
// going offline, failing the next calls of one operation, adding latency,
// and holding Gets until the test releases them.
//
// Each call first checks, in order: offline (fail at once), a pending
// FailNext for its operation (fail at once), the delay (sleep), and for Get
// the block (wait for release). Only then does it reach the decorated store.
// Waiting honours ctx.
package faulty

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
)

// Operation names for FailNext: the Backend method names.
const (
	OpList     = "List"
	OpListFlat = "ListFlat"
	OpStat     = "Stat"
	OpGet      = "Get"
	OpPut      = "Put"
	OpPutDelta = "PutDelta"
	OpCopy     = "Copy"
	OpDelete   = "Delete"
)

var knownOps = map[string]bool{
	OpList: true, OpListFlat: true, OpStat: true, OpGet: true, OpPut: true, OpPutDelta: true, OpCopy: true, OpDelete: true,
}

// Faulty wraps a Backend and misbehaves on request. It is safe for
// concurrent use.
type Faulty struct {
	inner backend.Backend

	mu      sync.Mutex
	offline bool               // GUARDED_BY(mu)
	fails   map[string]failure // GUARDED_BY(mu); by operation
	delay   time.Duration      // GUARDED_BY(mu)
	gate    chan struct{}      // GUARDED_BY(mu); non-nil while Gets are blocked

	blocked atomic.Int64 // Gets waiting at the gate
}

type failure struct {
	err error
	n   int
}

var (
	_ backend.Backend     = (*Faulty)(nil)
	_ backend.Presigner   = (*Faulty)(nil)
	_ backend.DeltaPutter = (*Faulty)(nil)
)

// New returns a decorator around b that behaves like b until told otherwise.
func New(b backend.Backend) *Faulty {
	return &Faulty{inner: b, fails: map[string]failure{}}
}

// Unwrap returns the decorated Backend.
func (f *Faulty) Unwrap() backend.Backend { return f.inner }

// SetOffline makes every call fail at once with an error wrapping
// backend.ErrOffline (true), or behave again (false). Reads from Get bodies
// opened earlier fail too while offline, like a dropped connection.
func (f *Faulty) SetOffline(offline bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.offline = offline
}

// FailNext makes the next n calls of op (OpGet, OpPut, …) fail with err, or
// with an error wrapping backend.ErrOffline when err is nil. It replaces any
// earlier FailNext for op. It panics on an unknown op: that is a bug in the
// test.
func (f *Faulty) FailNext(op string, err error, n int) {
	if !knownOps[op] {
		panic(fmt.Sprintf("faulty: unknown operation %q", op))
	}
	if err == nil {
		err = backend.ErrOffline
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fails[op] = failure{err: err, n: n}
}

// SetDelay makes every call wait d before it proceeds (0: no delay).
func (f *Faulty) SetDelay(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delay = d
}

// BlockGets holds every Get from now on (before it reaches the decorated
// store) until release is called. release may be called more than once.
func (f *Faulty) BlockGets() (release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gate == nil {
		f.gate = make(chan struct{})
	}
	gate := f.gate
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.gate == gate {
				f.gate = nil
			}
			close(gate)
		})
	}
}

// BlockedGets returns how many Gets are waiting for release, so that a test
// can wait until its reader is stuck.
func (f *Faulty) BlockedGets() int { return int(f.blocked.Load()) }

// before runs the injected behaviour for one call of op on key.
func (f *Faulty) before(ctx context.Context, op, key string) error {
	f.mu.Lock()
	if f.offline {
		f.mu.Unlock()
		return offlineError(op, key)
	}
	if fail, ok := f.fails[op]; ok && fail.n > 0 {
		fail.n--
		f.fails[op] = fail
		f.mu.Unlock()
		return fmt.Errorf("%s %q (injected): %w", op, key, fail.err)
	}
	delay, gate := f.delay, f.gate
	f.mu.Unlock()

	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("%s %q: %w", op, key, ctx.Err())
		}
	}
	if op == OpGet && gate != nil {
		f.blocked.Add(1)
		defer f.blocked.Add(-1)
		select {
		case <-gate:
		case <-ctx.Done():
			return fmt.Errorf("%s %q: %w", op, key, ctx.Err())
		}
		// The test may have gone offline while we waited.
		if f.isOffline() {
			return offlineError(op, key)
		}
	}
	return nil
}

func (f *Faulty) isOffline() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.offline
}

func offlineError(op, key string) error {
	return fmt.Errorf("%s %q (injected): %w", op, key, backend.ErrOffline)
}

// List implements backend.Backend.
func (f *Faulty) List(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	if err := f.before(ctx, OpList, prefix); err != nil {
		return err
	}
	return f.inner.List(ctx, prefix, fn)
}

// ListFlat implements backend.Backend.
func (f *Faulty) ListFlat(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	if err := f.before(ctx, OpListFlat, prefix); err != nil {
		return err
	}
	return f.inner.ListFlat(ctx, prefix, fn)
}

// Stat implements backend.Backend.
func (f *Faulty) Stat(ctx context.Context, key string) (backend.ObjectInfo, error) {
	if err := f.before(ctx, OpStat, key); err != nil {
		return backend.ObjectInfo{}, err
	}
	return f.inner.Stat(ctx, key)
}

// Get implements backend.Backend. Its body fails with ErrOffline while the
// decorator is offline.
func (f *Faulty) Get(ctx context.Context, key string, off, n int64, ifMatch string) (io.ReadCloser, error) {
	if err := f.before(ctx, OpGet, key); err != nil {
		return nil, err
	}
	rc, err := f.inner.Get(ctx, key, off, n, ifMatch)
	if err != nil {
		return nil, err
	}
	return &body{ReadCloser: rc, f: f, key: key}, nil
}

type body struct {
	io.ReadCloser
	f   *Faulty
	key string
}

func (b *body) Read(p []byte) (int, error) {
	if b.f.isOffline() {
		return 0, offlineError("read", b.key)
	}
	return b.ReadCloser.Read(p)
}

// Put implements backend.Backend.
func (f *Faulty) Put(ctx context.Context, key string, r io.ReadSeeker, size int64, meta map[string]string, cond backend.Cond) (backend.ObjectInfo, error) {
	if err := f.before(ctx, OpPut, key); err != nil {
		return backend.ObjectInfo{}, err
	}
	return f.inner.Put(ctx, key, r, size, meta, cond)
}

// PutDelta implements backend.DeltaPutter: the decorated store's PutDelta,
// or its Put of the whole body when it has none (see backend.PutDelta).
func (f *Faulty) PutDelta(ctx context.Context, key string, body io.ReaderAt, size int64, meta map[string]string, base string, same []backend.Range) (backend.DeltaResult, error) {
	if err := f.before(ctx, OpPutDelta, key); err != nil {
		return backend.DeltaResult{}, err
	}
	return backend.PutDelta(ctx, f.inner, key, body, size, meta, base, same)
}

// Copy implements backend.Backend.
func (f *Faulty) Copy(ctx context.Context, src, srcETag, dst string, cond backend.Cond) (backend.ObjectInfo, error) {
	if err := f.before(ctx, OpCopy, src); err != nil {
		return backend.ObjectInfo{}, err
	}
	return f.inner.Copy(ctx, src, srcETag, dst, cond)
}

// Delete implements backend.Backend.
func (f *Faulty) Delete(ctx context.Context, key string, ifMatch string) error {
	if err := f.before(ctx, OpDelete, key); err != nil {
		return err
	}
	return f.inner.Delete(ctx, key, ifMatch)
}

// PresignGet delegates to the decorated store, which must be a Presigner
// (else the error wraps errors.ErrUnsupported). It makes no request, so no
// fault applies.
func (f *Faulty) PresignGet(ctx context.Context, key string, expires time.Duration) (string, error) {
	p, ok := f.inner.(backend.Presigner)
	if !ok {
		return "", fmt.Errorf("presign %q: %s cannot make download links: %w", key, f.inner, errors.ErrUnsupported)
	}
	return p.PresignGet(ctx, key, expires)
}

// String names the decorated store.
func (f *Faulty) String() string { return f.inner.String() }
