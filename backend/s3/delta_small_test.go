package s3

import (
	"crypto/sha256"
	"testing"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/integration/minio"
)

// TestDeltaBelowMultipartThreshold: with the mount's settings (64 MiB
// multipart threshold, 16 MiB parts), a one-byte edit of a 20 MiB object
// sends one 5 MiB part and copies the rest, rather than the whole object.
func TestDeltaBelowMultipartThreshold(t *testing.T) {
	srv := minio.Start(t)
	bucket := minio.BucketName(t)
	srv.MakeBucket(t, bucket)
	s, err := New(t.Context(), Config{
		Bucket: bucket, Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	const size = 20 * mib
	const at = 12 * mib // in the part [10, 15) MiB
	v1 := randomBytes(41, size)
	base := putVersion(t, s, "mid.bin", v1)
	v2 := edited(v1, at)
	body := &readLog{data: v2}
	same := []backend.Range{{Off: 0, Len: at}, {Off: at + 1, Len: size - at - 1}}
	res, err := s.PutDelta(deltaCtx(t), "mid.bin", body, size, nil, base, same)
	if err != nil {
		t.Fatalf("PutDelta: %v", err)
	}
	if res.Sent != 5*mib || res.Copied != size-5*mib {
		t.Fatalf("sent %d, copied %d; want 5 MiB sent and the other 15 MiB copied", res.Sent, res.Copied)
	}
	if got, want := body.read(), []backend.Range{{Off: 10 * mib, Len: 5 * mib}}; len(got) != 1 || got[0] != want[0] {
		t.Fatalf("body bytes read = %v; want only %v", got, want)
	}
	if content(t, s, "mid.bin") != sha256.Sum256(v2) {
		t.Fatal("stored bytes differ from the new content")
	}
	wantNoOpenUploads(t, srv, bucket)
}
