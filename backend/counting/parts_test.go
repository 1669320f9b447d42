package counting

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/nimbus-fs/nimbus/backend"
)

// partStore is a PartUploader that accepts everything.
type partStore struct {
	backend.Backend
	aborted int
}

func (*partStore) PartSize() int64 { return 5 << 20 }
func (*partStore) CreateUpload(context.Context, string, map[string]string) (string, error) {
	return "id", nil
}
func (*partStore) UploadPart(_ context.Context, _, _ string, num int, _ io.ReaderAt, _, size int64) (backend.Part, error) {
	return backend.Part{Num: num, ETag: "e", Size: size}, nil
}
func (*partStore) CompleteUpload(_ context.Context, key, _ string, _ []backend.Part, _ backend.Cond) (backend.ObjectInfo, error) {
	return backend.ObjectInfo{Key: key, ETag: "x"}, nil
}
func (*partStore) ListUploads(context.Context, string) ([]backend.Upload, error) {
	return []backend.Upload{{ID: "id"}}, nil
}
func (p *partStore) AbortUpload(context.Context, string, string) error { p.aborted++; return nil }

func TestPartsCounts(t *testing.T) {
	ctx := context.Background()
	over := newCounting(t)
	if over.PartSize() != 0 {
		t.Fatalf("PartSize over dir = %d; want 0 (dir takes no parts)", over.PartSize())
	}
	if _, ok := backend.Parts(over); ok {
		t.Fatal("backend.Parts takes a counter over dir for a PartUploader")
	}
	if _, err := over.CreateUpload(ctx, "k", nil); err == nil {
		t.Fatal("CreateUpload over dir succeeded")
	}

	inner := &partStore{Backend: over.Unwrap()}
	c := New(inner)
	if _, ok := backend.Parts(c); !ok || c.PartSize() != 5<<20 {
		t.Fatalf("PartSize over a PartUploader = %d; want its own", c.PartSize())
	}
	id, err := c.CreateUpload(ctx, "k", nil)
	if err != nil {
		t.Fatal(err)
	}
	body := strings.NewReader("0123456789")
	p1, _ := c.UploadPart(ctx, "k", id, 1, body, 0, 6)
	p2, _ := c.UploadPart(ctx, "k", id, 2, body, 6, 4)
	if _, err := c.CompleteUpload(ctx, "k", id, []backend.Part{p1, p2}, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	if ups, err := c.ListUploads(ctx, "k"); err != nil || len(ups) != 1 {
		t.Fatalf("ListUploads = %v, %v; want it forwarded", ups, err)
	}
	if err := c.AbortUpload(ctx, "k", "other"); err != nil || inner.aborted != 1 {
		t.Fatalf("AbortUpload = %v, %d aborts; want it forwarded", err, inner.aborted)
	}
	wantCounts(t, c, map[string]int64{UploadPart: 2, BytesOut: 10, PutObject: 1})
}
