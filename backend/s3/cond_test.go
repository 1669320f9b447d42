package s3

import (
	"bytes"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/integration/minio"
)

// TestRefusedWriteOfALargeBody: MinIO answers a failed condition on a
// PutObject at once and resets the connection while a body of a few MiB is
// still being sent, so the client sees a reset, not the 412. Put must still
// report ErrPrecondition (not ErrOffline, which the journal would retry
// forever), and the object must be untouched.
func TestRefusedWriteOfALargeBody(t *testing.T) {
	srv := minio.Start(t)
	s, _ := openMultipart(t, srv)
	ctx := deltaCtx(t)
	v1 := randomBytes(41, testThreshold)
	base := putVersion(t, s, "obj", v1)
	v2 := randomBytes(42, testThreshold)
	for i := range 5 {
		_, err := s.Put(ctx, "obj", bytes.NewReader(v2), int64(len(v2)), nil, backend.Cond{IfMatch: "0123456789abcdef0123456789abcdef"})
		if !errors.Is(err, backend.ErrPrecondition) {
			t.Fatalf("try %d, stale If-Match: %v; want ErrPrecondition", i, err)
		}
		_, err = s.Put(ctx, "obj", bytes.NewReader(v2), int64(len(v2)), nil, backend.Cond{IfNoneMatch: true})
		if !errors.Is(err, backend.ErrPrecondition) {
			t.Fatalf("try %d, If-None-Match on an existing key: %v; want ErrPrecondition", i, err)
		}
	}
	wantUntouched(t, s, "obj", v1, base)
}

// TestResetOfAConditionalWrite: a conditional write cut by a reset is a
// failed precondition exactly when the object fails the condition, else
// the store was unreachable (retryable). Deterministic, where the test
// above depends on when MinIO resets.
func TestResetOfAConditionalWrite(t *testing.T) {
	srv := minio.Start(t)
	s, _ := openMultipart(t, srv)
	ctx := deltaCtx(t)
	etag := putVersion(t, s, "obj", []byte("v1"))
	reset := fmt.Errorf("write: %w", syscall.ECONNRESET)
	for _, tt := range []struct {
		name string
		key  string
		cond backend.Cond
		want error
	}{
		{"stale If-Match", "obj", backend.Cond{IfMatch: "0123456789abcdef0123456789abcdef"}, backend.ErrPrecondition},
		{"If-Match on an absent key", "absent", backend.Cond{IfMatch: etag}, backend.ErrPrecondition},
		{"If-None-Match on an existing key", "obj", backend.Cond{IfNoneMatch: true}, backend.ErrPrecondition},
		{"If-Match that holds", "obj", backend.Cond{IfMatch: etag}, backend.ErrOffline},
		{"If-None-Match that holds", "absent", backend.Cond{IfNoneMatch: true}, backend.ErrOffline},
		{"unconditional", "obj", backend.Cond{}, backend.ErrOffline},
	} {
		if err := s.putError(ctx, tt.key, tt.cond, reset); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v; want %v", tt.name, err, tt.want)
		}
	}
}
