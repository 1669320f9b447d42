package s3

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/integration/minio"
)

// sendParts creates an upload of key and sends data in testPartSize parts,
// the last first (as a writer's parts may finish out of order).
func sendParts(t *testing.T, s *Store, key string, data []byte, meta map[string]string) (string, []backend.Part) {
	t.Helper()
	ctx := t.Context()
	id, err := s.CreateUpload(ctx, key, meta)
	if err != nil {
		t.Fatalf("CreateUpload: %v", err)
	}
	n := (len(data) + testPartSize - 1) / testPartSize
	parts := make([]backend.Part, n)
	for i := n - 1; i >= 0; i-- {
		off := int64(i * testPartSize)
		size := min(int64(testPartSize), int64(len(data))-off)
		p, err := s.UploadPart(ctx, key, id, i+1, bytes.NewReader(data), off, size)
		if err != nil {
			t.Fatalf("UploadPart %d: %v", i+1, err)
		}
		if p.Num != i+1 || p.Size != size || p.ETag == "" {
			t.Fatalf("UploadPart %d = %+v", i+1, p)
		}
		parts[i] = p
	}
	return id, parts
}

func TestPartsRoundTrip(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := openMultipart(t, srv)
	if s.PartSize() != testPartSize {
		t.Fatalf("PartSize = %d; want %d", s.PartSize(), testPartSize)
	}
	if p, ok := backend.Parts(s); !ok || p != backend.PartUploader(s) {
		t.Fatal("backend.Parts does not see the S3 store as a PartUploader")
	}
	data := randomBytes(11, testSize)
	id, parts := sendParts(t, s, "big", data, map[string]string{"nimbus-upload": "tok"})
	if _, err := s.Stat(t.Context(), "big"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Stat before CompleteUpload = %v; want ErrNotFound (nothing visible yet)", err)
	}
	info, err := s.CompleteUpload(t.Context(), "big", id, parts, backend.Cond{IfNoneMatch: true})
	if err != nil {
		t.Fatalf("CompleteUpload: %v", err)
	}
	if info.Size != testSize || info.ETag == "" {
		t.Fatalf("CompleteUpload = %+v", info)
	}
	if content(t, s, "big") != sha256.Sum256(data) {
		t.Fatal("the completed object does not hold the parts' bytes")
	}
	st, err := s.Stat(t.Context(), "big")
	if err != nil || st.ETag != info.ETag || st.Meta["nimbus-upload"] != "tok" {
		t.Fatalf("Stat = %+v, %v; want ETag %s and the metadata given at CreateUpload", st, err, info.ETag)
	}
	wantNoOpenUploads(t, srv, bucket)
}

// TestPartsCompleteConditions checks that MinIO honours If-None-Match and
// If-Match on CompleteMultipartUpload, that a refused Complete leaves the
// object untouched and the upload open, and that the upload can then be
// completed under the right condition.
func TestPartsCompleteConditions(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := openMultipart(t, srv)
	ctx := t.Context()
	old := []byte("the remote version")
	cur, err := s.Put(ctx, "k", bytes.NewReader(old), int64(len(old)), nil, backend.Cond{})
	if err != nil {
		t.Fatal(err)
	}
	data := randomBytes(12, testSize)
	id, parts := sendParts(t, s, "k", data, nil)

	if _, err := s.CompleteUpload(ctx, "k", id, parts, backend.Cond{IfNoneMatch: true}); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("CompleteUpload If-None-Match over an existing key = %v; want ErrPrecondition", err)
	}
	wantUntouched(t, s, "k", old, cur.ETag)
	if _, err := s.CompleteUpload(ctx, "k", id, parts, backend.Cond{IfMatch: "0123456789abcdef0123456789abcdef"}); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("CompleteUpload with a stale If-Match = %v; want ErrPrecondition", err)
	}
	wantUntouched(t, s, "k", old, cur.ETag)
	if len(openUploads(t, srv, bucket)) != 1 {
		t.Fatalf("open uploads after refused completions = %v; want the one, still open", openUploads(t, srv, bucket))
	}
	info, err := s.CompleteUpload(ctx, "k", id, parts, backend.Cond{IfMatch: cur.ETag})
	if err != nil {
		t.Fatalf("CompleteUpload with the current ETag: %v", err)
	}
	if info.ETag == cur.ETag || content(t, s, "k") != sha256.Sum256(data) {
		t.Fatal("the completion with the current ETag did not replace the object")
	}

	t.Run("AbsentIfMatch", func(t *testing.T) {
		id, parts := sendParts(t, s, "absent", data, nil)
		if _, err := s.CompleteUpload(ctx, "absent", id, parts, backend.Cond{IfMatch: cur.ETag}); !errors.Is(err, backend.ErrPrecondition) {
			t.Fatalf("CompleteUpload If-Match of an absent key = %v; want ErrPrecondition", err)
		}
		if _, err := s.Stat(ctx, "absent"); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("Stat after the refused completion = %v; want ErrNotFound", err)
		}
		if err := s.AbortUpload(ctx, "absent", id); err != nil {
			t.Fatalf("AbortUpload: %v", err)
		}
		wantNoOpenUploads(t, srv, bucket)
	})
	t.Run("BadParts", func(t *testing.T) {
		if _, err := s.CompleteUpload(ctx, "k", "x", []backend.Part{{Num: 2, ETag: "e"}}, backend.Cond{}); err == nil {
			t.Fatal("CompleteUpload with parts not numbered from 1 succeeded")
		}
		if _, err := s.UploadPart(ctx, "k", "x", 0, bytes.NewReader(nil), 0, 0); err == nil {
			t.Fatal("UploadPart numbered 0 succeeded")
		}
	})
}

// TestPartsAbort checks that an aborted upload leaves nothing, and that
// its later use says so with ErrNoUpload.
func TestPartsAbort(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := openMultipart(t, srv)
	ctx := t.Context()
	data := randomBytes(13, testSize)
	id, parts := sendParts(t, s, "k", data, nil)
	other, err := s.CreateUpload(ctx, "k2", nil) // same prefix, another key
	if err != nil {
		t.Fatal(err)
	}
	ups, err := s.ListUploads(ctx, "k")
	if err != nil || len(ups) != 1 || ups[0].ID != id || time.Since(ups[0].Initiated) > time.Hour {
		t.Fatalf("ListUploads(k) = %+v, %v; want the one upload of k", ups, err)
	}
	if err := s.AbortUpload(ctx, "k2", other); err != nil {
		t.Fatal(err)
	}
	if err := s.AbortUpload(ctx, "k", id); err != nil {
		t.Fatalf("AbortUpload: %v", err)
	}
	wantNoOpenUploads(t, srv, bucket)
	if err := s.AbortUpload(ctx, "k", id); err != nil {
		t.Fatalf("AbortUpload of an upload already aborted = %v; want nil", err)
	}
	if _, err := s.UploadPart(ctx, "k", id, 1, bytes.NewReader(data), 0, testPartSize); !errors.Is(err, backend.ErrNoUpload) {
		t.Fatalf("UploadPart after abort = %v; want ErrNoUpload", err)
	}
	if _, err := s.CompleteUpload(ctx, "k", id, parts, backend.Cond{}); !errors.Is(err, backend.ErrNoUpload) {
		t.Fatalf("CompleteUpload after abort = %v; want ErrNoUpload", err)
	}
	if _, err := s.Stat(ctx, "k"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Stat after abort = %v; want ErrNotFound", err)
	}
}
