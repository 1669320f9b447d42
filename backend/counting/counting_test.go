package counting

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/dir"
)

func newCounting(t *testing.T) *Counting {
	t.Helper()
	d, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return New(d)
}

func wantCounts(t *testing.T, c *Counting, want map[string]int64) {
	t.Helper()
	full := map[string]int64{
		ListObjectsV2: 0, HeadObject: 0, GetObject: 0, PutObject: 0,
		CopyObject: 0, DeleteObject: 0, BytesIn: 0, BytesOut: 0,
		UploadPartCopy: 0, BytesCopied: 0, UploadPart: 0,
	}
	maps.Copy(full, want)
	if got := c.Snapshot(); !maps.Equal(got, full) {
		t.Fatalf("Snapshot = %v; want %v", got, full)
	}
}

func putString(t *testing.T, b backend.Backend, key, content string, cond backend.Cond) error {
	t.Helper()
	_, err := b.Put(context.Background(), key, strings.NewReader(content), int64(len(content)), nil, cond)
	return err
}

func TestCountsEachOperation(t *testing.T) {
	c := newCounting(t)
	ctx := context.Background()
	wantCounts(t, c, nil)

	if err := putString(t, c, "a", "hello", backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	// A refused conditional put still counts, body included.
	if err := putString(t, c, "a", "again", backend.Cond{IfNoneMatch: true}); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("Put IfNoneMatch = %v", err)
	}
	info, err := c.Stat(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Copy(ctx, "a", info.ETag, "b", backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "b", ""); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, c, map[string]int64{PutObject: 2, BytesOut: 10, HeadObject: 1, CopyObject: 1, DeleteObject: 1})
}

func TestGetCountsBytesAsRead(t *testing.T) {
	c := newCounting(t)
	if err := putString(t, c, "f", strings.Repeat("x", 1000), backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	r, err := c.Get(context.Background(), "f", 100, 500, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, 120)); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, c, map[string]int64{PutObject: 1, BytesOut: 1000, GetObject: 1, BytesIn: 120})
	if _, err := io.Copy(io.Discard, r); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, c, map[string]int64{PutObject: 1, BytesOut: 1000, GetObject: 1, BytesIn: 500})

	// A failed Get is a request too, with no bytes.
	if _, err := c.Get(context.Background(), "absent", 0, -1, ""); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Get(absent) = %v", err)
	}
	wantCounts(t, c, map[string]int64{PutObject: 1, BytesOut: 1000, GetObject: 2, BytesIn: 500})
}

func TestListCountsPages(t *testing.T) {
	c := newCounting(t)
	ctx := context.Background()
	const n = 2500
	for i := range n {
		// Straight to the inner store, so as not to count the setup.
		if err := putString(t, c.Unwrap(), fmt.Sprintf("k%04d", i), "", backend.Cond{}); err != nil {
			t.Fatal(err)
		}
	}
	pages := 0
	count := func(backend.Page) error { pages++; return nil }
	if err := c.List(ctx, "", count); err != nil {
		t.Fatal(err)
	}
	if pages != 3 {
		t.Fatalf("List delivered %d pages; want 3", pages)
	}
	wantCounts(t, c, map[string]int64{ListObjectsV2: 3})
	if err := c.ListFlat(ctx, "", count); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, c, map[string]int64{ListObjectsV2: 6})

	// fn stopping the listing: only the pages delivered count.
	stop := errors.New("stop")
	if err := c.List(ctx, "", func(backend.Page) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("List = %v; want %v", err, stop)
	}
	wantCounts(t, c, map[string]int64{ListObjectsV2: 7})

	// A listing that fails on its own counts the failed request.
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.List(canceled, "", count); !errors.Is(err, context.Canceled) {
		t.Fatalf("List(canceled) = %v", err)
	}
	wantCounts(t, c, map[string]int64{ListObjectsV2: 8})
}

func TestConcurrentCounting(t *testing.T) {
	c := newCounting(t)
	if err := putString(t, c, "f", "0123456789", backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	const workers, rounds = 16, 50
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range rounds {
				if _, err := c.Stat(context.Background(), "f"); err != nil {
					t.Error(err)
					return
				}
				r, err := c.Get(context.Background(), "f", 0, -1, "")
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := io.Copy(io.Discard, r); err != nil {
					t.Error(err)
				}
				if err := r.Close(); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	wantCounts(t, c, map[string]int64{
		PutObject: 1, BytesOut: 10,
		HeadObject: workers * rounds, GetObject: workers * rounds, BytesIn: 10 * workers * rounds,
	})
}

// presigner is a store that can presign.
type presigner struct {
	backend.Backend
	calls int
}

func (p *presigner) PresignGet(_ context.Context, key string, _ time.Duration) (string, error) {
	p.calls++
	return "https://example.invalid/" + key, nil
}

func TestPresignGet(t *testing.T) {
	c := newCounting(t)
	_, err := c.PresignGet(context.Background(), "k", time.Hour)
	if !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("PresignGet over dir = %v; want ErrUnsupported", err)
	}
	p := &presigner{Backend: c.Unwrap()}
	c = New(p)
	u, err := c.PresignGet(context.Background(), "k", time.Hour)
	if err != nil || u != "https://example.invalid/k" || p.calls != 1 {
		t.Fatalf("PresignGet = %q, %v after %d calls; want the inner store's URL", u, err, p.calls)
	}
	wantCounts(t, c, nil)
	if c.String() != p.String() {
		t.Fatalf("String() = %q; want the inner %q", c.String(), p.String())
	}
}

// deltaStore is a DeltaPutter that reports a canned result (and err).
type deltaStore struct {
	backend.Backend
	res   backend.DeltaResult
	err   error
	calls int
}

func (d *deltaStore) PutDelta(context.Context, string, io.ReaderAt, int64, map[string]string, string, []backend.Range) (backend.DeltaResult, error) {
	d.calls++
	return d.res, d.err
}

func TestPutDeltaCounts(t *testing.T) {
	ctx := context.Background()
	c := newCounting(t)
	if err := putString(t, c.Unwrap(), "f", "0123456789", backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	info, err := c.Unwrap().Stat(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}

	// Over a store that cannot copy ranges (dir), the whole body is Put.
	same := []backend.Range{{Off: 0, Len: 5}}
	res, err := c.PutDelta(ctx, "f", strings.NewReader("abcdefghij"), 10, nil, info.ETag, same)
	if err != nil || res.Sent != 10 || res.CopyParts != 0 {
		t.Fatalf("PutDelta over dir = %+v, %v; want the whole body sent", res, err)
	}
	// Conditional on the base, which has changed now.
	if _, err := c.PutDelta(ctx, "f", strings.NewReader("ABCDEFGHIJ"), 10, nil, info.ETag, same); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("PutDelta on a stale base over dir = %v; want ErrPrecondition", err)
	}
	wantCounts(t, c, map[string]int64{PutObject: 2, BytesOut: 20})

	// Over a DeltaPutter, what it reports, failures included.
	inner := &deltaStore{Backend: c.Unwrap(), res: backend.DeltaResult{Sent: 5 << 20, Copied: 100 << 20, CopyParts: 2}}
	c = New(inner)
	if _, err := c.PutDelta(ctx, "f", strings.NewReader(""), 105<<20, nil, "e", nil); err != nil {
		t.Fatal(err)
	}
	inner.res, inner.err = backend.DeltaResult{Sent: 1, Copied: 2, CopyParts: 1}, backend.ErrPrecondition
	if _, err := c.PutDelta(ctx, "f", strings.NewReader(""), 105<<20, nil, "e", nil); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("PutDelta = %v; want the inner store's error", err)
	}
	if inner.calls != 2 {
		t.Fatalf("the inner PutDelta was called %d times; want 2", inner.calls)
	}
	wantCounts(t, c, map[string]int64{PutObject: 2, BytesOut: 5<<20 + 1, BytesCopied: 100<<20 + 2, UploadPartCopy: 3})
}
