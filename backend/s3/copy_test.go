package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/middleware"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/integration/minio"
)

// The copy tests lower the copy threshold to testThreshold (6 MiB): a
// testSize (17 MiB) object is copied as the parts [0,6) [6,12) [12,17) MiB.
const testCopyParts = 3

// openCopying returns a Store on bucket of srv with the small multipart and
// copy settings.
func openCopying(t *testing.T, srv *minio.Server, bucket string) *Store {
	t.Helper()
	s, err := New(t.Context(), Config{
		Bucket: bucket, Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey,
		MultipartThreshold: testThreshold, PartSize: testPartSize, UploadConcurrency: 4,
		CopyThreshold: testThreshold,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

// beforeInput calls fn with the input of each request s's uploader sends
// (the requests of multipart uploads and copies), after the encryption
// middleware has filled it in, before sending it.
func beforeInput(s *Store, fn func(in any)) {
	s.uploader.ClientOptions = append(s.uploader.ClientOptions, func(o *awss3.Options) {
		o.APIOptions = append(o.APIOptions, func(st *middleware.Stack) error {
			return st.Initialize.Add(middleware.InitializeMiddlewareFunc("nimbusBeforeInput",
				func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
					fn(in.Parameters)
					return next.HandleInitialize(ctx, in)
				}), middleware.After)
		})
	})
}

// putRaw stores data under key with a plain client, with a content type
// and metadata, and returns its ETag.
func putRaw(t *testing.T, srv *minio.Server, bucket, key string, data []byte, meta map[string]string) string {
	t.Helper()
	out, err := srv.Client().PutObject(t.Context(), &awss3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(data),
		ContentType: aws.String("text/x-nimbus-test"), Metadata: meta,
	})
	if err != nil {
		t.Fatalf("PutObject %q: %v", key, err)
	}
	return unquoteETag(out.ETag)
}

// wantCopy fails the test unless key holds data with meta and the test
// content type.
func wantCopy(t *testing.T, srv *minio.Server, s *Store, bucket, key string, data []byte, meta map[string]string) {
	t.Helper()
	if content(t, s, key) != sha256.Sum256(data) {
		t.Fatalf("%s does not hold the source's bytes", key)
	}
	out, err := srv.Client().HeadObject(t.Context(), &awss3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("HEAD %s: %v", key, err)
	}
	if !maps.Equal(lowerKeys(out.Metadata), meta) || aws.ToString(out.ContentType) != "text/x-nimbus-test" {
		t.Fatalf("%s: metadata %v, content type %q; want the source's %v, text/x-nimbus-test", key, out.Metadata, aws.ToString(out.ContentType), meta)
	}
}

// wantAbsent fails the test if key exists.
func wantAbsent(t *testing.T, s *Store, key string) {
	t.Helper()
	if _, err := s.Stat(t.Context(), key); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Stat %s = %v; want ErrNotFound (no object made)", key, err)
	}
}

// TestMultipartCopy: Copy of a source over the copy threshold is a
// multipart upload of UploadPartCopy parts that keeps the bytes, the
// metadata and the content type; the destination's conditions hold, also
// when the destination changes during the copy (checked by the Complete);
// a source changed during the copy fails it with ErrPrecondition and makes
// no object.
func TestMultipartCopy(t *testing.T) {
	srv := minio.Start(t)
	bucket := minio.BucketName(t)
	srv.MakeBucket(t, bucket)
	s := openCopying(t, srv, bucket)
	ops := recordOps(s)
	ctx := deltaCtx(t)
	data := randomBytes(40, testSize)
	meta := map[string]string{"nimbus-mode": "100644", "nimbus-sha256": "abc"}
	srcTag := putRaw(t, srv, bucket, "src", data, meta)
	wantParts := []string{"CreateMultipartUpload"}
	for range testCopyParts {
		wantParts = append(wantParts, "UploadPartCopy")
	}
	wantParts = append(wantParts, "CompleteMultipartUpload")

	t.Run("Copy", func(t *testing.T) {
		ops.take()
		info, err := s.Copy(ctx, "src", srcTag, "dst", backend.Cond{IfNoneMatch: true})
		if err != nil {
			t.Fatalf("Copy: %v", err)
		}
		if got := sortedOps(ops.take()); !slices.Equal(got, sortedOps(wantParts)) {
			t.Fatalf("requests = %v; want %v", got, wantParts)
		}
		wantCopy(t, srv, s, bucket, "dst", data, meta)
		st, err := s.Stat(ctx, "dst")
		if err != nil || info.ETag != st.ETag || info.Size != testSize || !strings.HasSuffix(st.ETag, "-3") {
			t.Fatalf("Copy = %+v; Stat = %+v, %v; want the multipart ETag of 3 parts and the size", info, st, err)
		}
		wantNoOpenUploads(t, srv, bucket)
	})

	t.Run("SmallOneCopyObject", func(t *testing.T) {
		putRaw(t, srv, bucket, "small", []byte("small"), meta)
		ops.take()
		if _, err := s.Copy(ctx, "small", "", "small-copy", backend.Cond{}); err != nil {
			t.Fatalf("Copy: %v", err)
		}
		if got := ops.take(); len(got) != 0 {
			t.Fatalf("a copy under the threshold sent %v; want one CopyObject", got)
		}
		wantCopy(t, srv, s, bucket, "small-copy", []byte("small"), meta)
	})

	t.Run("Conditions", func(t *testing.T) {
		other := randomBytes(41, 100)
		otherTag := putVersion(t, s, "taken", other)
		for name, cond := range map[string]backend.Cond{"IfNoneMatch": {IfNoneMatch: true}, "StaleIfMatch": {IfMatch: srcTag}} {
			if _, err := s.Copy(ctx, "src", "", "taken", cond); !errors.Is(err, backend.ErrPrecondition) {
				t.Errorf("%s: Copy onto taken = %v; want ErrPrecondition", name, err)
			}
		}
		if _, err := s.Copy(ctx, "src", "", "absent", backend.Cond{IfMatch: srcTag}); !errors.Is(err, backend.ErrPrecondition) {
			t.Errorf("Copy If-Match onto an absent key = %v; want ErrPrecondition", err)
		}
		if _, err := s.Copy(ctx, "src", otherTag, "x", backend.Cond{}); !errors.Is(err, backend.ErrPrecondition) {
			t.Errorf("Copy of a source whose ETag is not srcETag = %v; want ErrPrecondition", err)
		}
		wantUntouched(t, s, "taken", other, otherTag)
		wantAbsent(t, s, "absent")
		wantAbsent(t, s, "x")
		if _, err := s.Copy(ctx, "src", "", "taken", backend.Cond{IfMatch: otherTag}); err != nil {
			t.Fatalf("Copy If-Match the current ETag: %v", err)
		}
		wantCopy(t, srv, s, bucket, "taken", data, meta)
		wantNoOpenUploads(t, srv, bucket)
	})

	// Another writer changes the destination after the HEAD that checks
	// the condition, before the Complete: the Complete's condition fails.
	for name, cond := range map[string]func(etag string) backend.Cond{
		"IfNoneMatch": func(string) backend.Cond { return backend.Cond{IfNoneMatch: true} },
		"IfMatch":     func(etag string) backend.Cond { return backend.Cond{IfMatch: etag} },
	} {
		t.Run("DestinationChangedBeforeComplete"+name, func(t *testing.T) {
			key := "raced-" + name
			var base string
			if name == "IfMatch" {
				base = putVersion(t, s, key, []byte("the version the copy replaces"))
			}
			theirs := []byte("written during the copy by another client")
			var once sync.Once
			var theirTag string
			beforeOp(s, func(op string) {
				if op == "CompleteMultipartUpload" {
					once.Do(func() { theirTag = putRaw(t, srv, bucket, key, theirs, nil) })
				}
			})
			_, err := s.Copy(ctx, "src", srcTag, key, cond(base))
			if theirTag == "" {
				t.Fatal("the other writer did not write before the Complete")
			}
			if !errors.Is(err, backend.ErrPrecondition) {
				t.Fatalf("Copy over a destination changed before the Complete = %v; want ErrPrecondition", err)
			}
			wantUntouched(t, s, key, theirs, theirTag)
			wantNoOpenUploads(t, srv, bucket)
		})
	}

	t.Run("SourceChangedDuringCopy", func(t *testing.T) {
		changed := randomBytes(42, testSize) // same size: only the ETag differs
		var once sync.Once
		var newTag string
		beforeOp(s, func(op string) {
			if op == "UploadPartCopy" {
				once.Do(func() { newTag = putRaw(t, srv, bucket, "src", changed, meta) })
			}
		})
		_, err := s.Copy(ctx, "src", "", "mixed", backend.Cond{IfNoneMatch: true})
		if newTag == "" {
			t.Fatal("the source was not changed during the copy")
		}
		if !errors.Is(err, backend.ErrPrecondition) {
			t.Fatalf("Copy of a source changed during the copy = %v; want ErrPrecondition", err)
		}
		wantAbsent(t, s, "mixed")
		wantNoOpenUploads(t, srv, bucket)

		// Without a source ETag or a condition, the copy starts again
		// from the new version, as the single copy does.
		once = sync.Once{}
		newTag = ""
		_, err = s.Copy(ctx, "src", "", "again", backend.Cond{})
		if newTag == "" || err != nil {
			t.Fatalf("Copy of a source changed during the copy, unconditional: changed %v, %v; want it copied again", newTag != "", err)
		}
		wantCopy(t, srv, s, bucket, "again", changed, meta)
		wantNoOpenUploads(t, srv, bucket)
	})
}

// TestMultipartCopyVersion: CopyVersion of a version over the copy
// threshold copies that version's bytes and metadata in parts, under the
// destination's condition.
func TestMultipartCopyVersion(t *testing.T) {
	srv := minio.Start(t)
	bucket := minio.BucketName(t)
	srv.MakeBucket(t, bucket)
	srv.EnableVersioning(t, bucket)
	s := openCopying(t, srv, bucket)
	ops := recordOps(s)
	ctx := deltaCtx(t)
	v1 := randomBytes(43, testSize)
	meta := map[string]string{"nimbus-sha256": "v1"}
	putRaw(t, srv, bucket, "k", v1, meta)
	cur := putRaw(t, srv, bucket, "k", randomBytes(44, testSize+1), map[string]string{"nimbus-sha256": "v2"})
	vs := listVersions(t, s, "k")
	if len(vs) != 2 {
		t.Fatalf("versions of k = %+v", vs)
	}
	old := vs[1].ID
	if _, err := s.CopyVersion(ctx, "k", old, "k", backend.Cond{IfMatch: "0123456789abcdef0123456789abcdef"}); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("CopyVersion with a stale If-Match = %v; want ErrPrecondition", err)
	}
	ops.take()
	if _, err := s.CopyVersion(ctx, "k", old, "k", backend.Cond{IfMatch: cur}); err != nil {
		t.Fatalf("CopyVersion: %v", err)
	}
	if got := ops.take(); slices.Index(got, "UploadPartCopy") < 0 {
		t.Fatalf("requests = %v; want a multipart copy", got)
	}
	wantCopy(t, srv, s, bucket, "k", v1, meta)
	if n := len(listVersions(t, s, "k")); n != 3 {
		t.Fatalf("k has %d versions after the restore; want 3", n)
	}
	wantNoOpenUploads(t, srv, bucket)
}

func TestCopyThresholdConfig(t *testing.T) {
	for _, th := range []int64{-1, minPartSize - 1, maxCopyObjectSize + 1} {
		if _, err := withMultipartDefaults(Config{CopyThreshold: th}); err == nil {
			t.Errorf("CopyThreshold %d accepted", th)
		}
	}
	cfg, err := withMultipartDefaults(Config{})
	if err != nil || cfg.CopyThreshold != 5<<30 {
		t.Fatalf("default CopyThreshold = %d, %v; want 5 GiB", cfg.CopyThreshold, err)
	}
	s := &Store{copyThreshold: 5 << 30}
	if got := s.copyPartSize(6 << 30); got != maxCopyPartSize {
		t.Errorf("part size of a 6 GiB copy = %d; want %d", got, maxCopyPartSize)
	}
	if got := s.copyPartSize(10000 * maxCopyPartSize * 2); got != 2*maxCopyPartSize {
		t.Errorf("part size of a copy of 20,000 default parts = %d; want twice the default (10,000 parts at most)", got)
	}
	if parts := planCopy(17, 6); len(parts) != 3 || parts[2] != (deltaPart{off: 12, n: 5, copy: true}) {
		t.Errorf("planCopy(17, 6) = %+v", parts)
	}
}
