package faulty

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/dir"
	"github.com/nimbus-fs/nimbus/integration/wait"
)

func newFaulty(t *testing.T) *Faulty {
	t.Helper()
	d, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := New(d)
	if _, err := f.Put(context.Background(), "k", strings.NewReader("content"), 7, nil, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	return f
}

func put(f backend.Backend, key string) error {
	_, err := f.Put(context.Background(), key, strings.NewReader("x"), 1, nil, backend.Cond{})
	return err
}

func read(t *testing.T, b backend.Backend, key string) (string, error) {
	t.Helper()
	r, err := b.Get(context.Background(), key, 0, -1, "")
	if err != nil {
		return "", err
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	return string(data), err
}

// ops calls every Backend and DeltaPutter method once and returns their
// errors by name.
func ops(f *Faulty) map[string]error {
	ctx := context.Background()
	nop := func(backend.Page) error { return nil }
	errs := map[string]error{}
	errs[OpList] = f.List(ctx, "", nop)
	errs[OpListFlat] = f.ListFlat(ctx, "", nop)
	_, errs[OpStat] = f.Stat(ctx, "k")
	_, errs[OpGet] = f.Get(ctx, "k", 0, -1, "")
	errs[OpPut] = put(f, "new")
	base := "absent" // when the Put failed; PutDelta must fail before it matters
	if info, err := f.Unwrap().Stat(ctx, "new"); err == nil {
		base = info.ETag
	}
	_, errs[OpPutDelta] = f.PutDelta(ctx, "new", strings.NewReader("y"), 1, nil, base, nil)
	_, errs[OpCopy] = f.Copy(ctx, "k", "", "copy", backend.Cond{})
	errs[OpDelete] = f.Delete(ctx, "k", "")
	return errs
}

func TestSetOffline(t *testing.T) {
	f := newFaulty(t)
	r, err := f.Get(context.Background(), "k", 0, -1, "")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	f.SetOffline(true)
	start := time.Now()
	for op, err := range ops(f) {
		if !errors.Is(err, backend.ErrOffline) {
			t.Errorf("%s while offline = %v; want ErrOffline", op, err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("offline calls took %v; want them at once", d)
	}
	if _, err := io.ReadAll(r); !errors.Is(err, backend.ErrOffline) {
		t.Errorf("reading a body opened before going offline = %v; want ErrOffline", err)
	}
	// Nothing reached the store.
	if _, err := f.Unwrap().Stat(context.Background(), "new"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("the offline Put reached the store: %v", err)
	}

	f.SetOffline(false)
	for op, err := range ops(f) {
		if err != nil {
			t.Errorf("%s back online: %v", op, err)
		}
	}
}

func TestFailNext(t *testing.T) {
	f := newFaulty(t)
	f.FailNext(OpPut, backend.ErrPrecondition, 2)
	for i := range 2 {
		if err := put(f, "a"); !errors.Is(err, backend.ErrPrecondition) {
			t.Fatalf("Put %d = %v; want the injected ErrPrecondition", i, err)
		}
	}
	if _, err := f.Stat(context.Background(), "k"); err != nil {
		t.Fatalf("Stat, not targeted: %v", err)
	}
	if err := put(f, "a"); err != nil {
		t.Fatalf("third Put: %v", err)
	}

	f.FailNext(OpGet, nil, 1)
	if _, err := read(t, f, "k"); !errors.Is(err, backend.ErrOffline) {
		t.Fatalf("Get with a nil injected error = %v; want ErrOffline", err)
	}
	if got, err := read(t, f, "k"); err != nil || got != "content" {
		t.Fatalf("next Get = %q, %v", got, err)
	}

	defer func() {
		if recover() == nil {
			t.Fatal("FailNext with an unknown op did not panic")
		}
	}()
	f.FailNext("GetObject", nil, 1)
}

func TestSetDelay(t *testing.T) {
	f := newFaulty(t)
	const d = 50 * time.Millisecond
	f.SetDelay(d)
	start := time.Now()
	if _, err := f.Stat(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < d {
		t.Fatalf("Stat took %v; want at least %v", took, d)
	}

	f.SetDelay(time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := f.Stat(ctx, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stat during a long delay = %v; want DeadlineExceeded", err)
	}
	f.SetDelay(0)
	if _, err := f.Stat(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
}

func TestBlockGets(t *testing.T) {
	f := newFaulty(t)
	release := f.BlockGets()
	type result struct {
		data string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		data, err := read(t, f, "k")
		done <- result{data, err}
	}()
	wait.Until(t, 5*time.Second, "the Get to block", func() bool { return f.BlockedGets() == 1 })
	select {
	case r := <-done:
		t.Fatalf("Get returned %+v while blocked", r)
	case <-time.After(20 * time.Millisecond):
	}
	// Other operations pass.
	if _, err := f.Stat(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	release()
	release() // harmless
	if r := <-done; r.err != nil || r.data != "content" {
		t.Fatalf("released Get = %+v", r)
	}
	if f.BlockedGets() != 0 {
		t.Fatalf("BlockedGets = %d after release", f.BlockedGets())
	}
	if got, err := read(t, f, "k"); err != nil || got != "content" {
		t.Fatalf("Get after release = %q, %v", got, err)
	}
}

func TestBlockedGetHonoursContextAndOffline(t *testing.T) {
	f := newFaulty(t)
	release := f.BlockGets()
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := f.Get(ctx, "k", 0, -1, ""); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("blocked Get with a deadline = %v; want DeadlineExceeded", err)
	}

	errc := make(chan error, 1)
	go func() {
		_, err := f.Get(context.Background(), "k", 0, -1, "")
		errc <- err
	}()
	wait.Until(t, 5*time.Second, "the Get to block", func() bool { return f.BlockedGets() == 1 })
	f.SetOffline(true)
	release()
	if err := <-errc; !errors.Is(err, backend.ErrOffline) {
		t.Fatalf("Get released while offline = %v; want ErrOffline", err)
	}
}

func TestPresignUnsupported(t *testing.T) {
	f := newFaulty(t)
	if _, err := f.PresignGet(context.Background(), "k", time.Hour); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("PresignGet over dir = %v; want ErrUnsupported", err)
	}
}
