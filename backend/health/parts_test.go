package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/nimbus-fs/nimbus/backend"
)

// flakyParts is a flakyStore that takes parts; every call answers its err.
type flakyParts struct{ flakyStore }

func (*flakyParts) PartSize() int64 { return 5 << 20 }
func (f *flakyParts) CreateUpload(context.Context, string, map[string]string) (string, error) {
	return "id", f.result()
}
func (f *flakyParts) UploadPart(_ context.Context, _, _ string, num int, _ io.ReaderAt, _, size int64) (backend.Part, error) {
	return backend.Part{Num: num, Size: size}, f.result()
}
func (f *flakyParts) CompleteUpload(_ context.Context, key, _ string, _ []backend.Part, _ backend.Cond) (backend.ObjectInfo, error) {
	return backend.ObjectInfo{Key: key}, f.result()
}
func (f *flakyParts) AbortUpload(context.Context, string, string) error { return f.result() }
func (f *flakyParts) ListUploads(context.Context, string) ([]backend.Upload, error) {
	return nil, f.result()
}

// TestPartsForwardAndFailFastOffline: the part calls reach the store's
// own while online, mark the store offline like any call, and then fail at
// once; over a store that takes no parts, PartSize is 0.
func TestPartsForwardAndFailFastOffline(t *testing.T) {
	if c := New(&flakyStore{}); c.PartSize() != 0 {
		t.Fatalf("PartSize over a store without parts = %d; want 0", c.PartSize())
	} else if _, err := c.CreateUpload(context.Background(), "k", nil); err == nil {
		t.Fatal("CreateUpload over a store without parts succeeded")
	}
	inner := &flakyParts{}
	c := New(inner)
	ctx := context.Background()
	if _, ok := backend.Parts(c); !ok || c.PartSize() != 5<<20 {
		t.Fatalf("PartSize = %d; want the store's", c.PartSize())
	}
	body := strings.NewReader("0123456789")
	if id, err := c.CreateUpload(ctx, "k", nil); err != nil || id != "id" {
		t.Fatalf("CreateUpload = %q, %v", id, err)
	}
	if p, err := c.UploadPart(ctx, "k", "id", 1, body, 0, 10); err != nil || p.Size != 10 {
		t.Fatalf("UploadPart = %+v, %v", p, err)
	}
	if _, err := c.CompleteUpload(ctx, "k", "id", nil, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListUploads(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if err := c.AbortUpload(ctx, "k", "id"); err != nil {
		t.Fatal(err)
	}
	inner.fail(fmt.Errorf("dial: %w", backend.ErrOffline))
	if _, err := c.UploadPart(ctx, "k", "id", 2, body, 0, 10); !errors.Is(err, backend.ErrOffline) {
		t.Fatalf("UploadPart to an unreachable store = %v; want ErrOffline", err)
	}
	if c.Online() {
		t.Fatal("still online after UploadPart failed with ErrOffline")
	}
	if _, err := c.CreateUpload(ctx, "k", nil); !errors.Is(err, backend.ErrOffline) {
		t.Fatalf("CreateUpload while offline = %v; want ErrOffline", err)
	}
	if got := inner.calls.Load(); got != 6 {
		t.Fatalf("%d calls reached the store; want 6 (none while offline)", got)
	}
}
