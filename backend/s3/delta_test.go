package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/integration/minio"
)

// The delta tests use the small multipart settings of multipart_test.go: a
// testSize (17 MiB) object is the parts [0,5) [5,10) [10,15) [15,17) MiB.
const mib = 1 << 20

// deltaCtx bounds one delta test.
func deltaCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// readLog is an io.ReaderAt over data that records the ranges read from
// it, and calls hook (if set) with the offset of each read.
type readLog struct {
	data []byte
	hook func(off int64)

	mu    sync.Mutex
	reads []backend.Range // GUARDED_BY(mu)
}

func (r *readLog) ReadAt(p []byte, off int64) (int, error) {
	if r.hook != nil {
		r.hook(off)
	}
	n, err := bytes.NewReader(r.data).ReadAt(p, off)
	r.mu.Lock()
	r.reads = append(r.reads, backend.Range{Off: off, Len: int64(n)})
	r.mu.Unlock()
	return n, err
}

// read returns the distinct byte ranges read so far, merged and sorted. The
// SDK reads a part twice (to sign it, then to send it); this counts it once.
func (r *readLog) read() []backend.Range {
	r.mu.Lock()
	reads := slices.Clone(r.reads)
	r.mu.Unlock()
	sort.Slice(reads, func(i, j int) bool { return reads[i].Off < reads[j].Off })
	var out []backend.Range
	for _, x := range reads {
		if x.Len == 0 {
			continue
		}
		if n := len(out); n > 0 && x.Off <= out[n-1].End() {
			out[n-1].Len = max(out[n-1].End(), x.End()) - out[n-1].Off
			continue
		}
		out = append(out, x)
	}
	return out
}

// sortedOps returns ops sorted, for comparing requests sent in parallel.
func sortedOps(ops []string) []string {
	ops = slices.Clone(ops)
	slices.Sort(ops)
	return ops
}

// putVersion stores data under key with Put and returns its ETag.
func putVersion(t *testing.T, s *Store, key string, data []byte) string {
	t.Helper()
	info, err := s.Put(deltaCtx(t), key, bytes.NewReader(data), int64(len(data)), nil, backend.Cond{})
	if err != nil {
		t.Fatalf("Put %q: %v", key, err)
	}
	return info.ETag
}

// edited returns a copy of data with the byte at off flipped.
func edited(data []byte, off int) []byte {
	out := slices.Clone(data)
	out[off] ^= 0xff
	return out
}

// TestMinIOCopyPartSourceIfMatch checks, on the pinned MinIO itself, what
// delta.go relies on: UploadPartCopy refuses a source whose ETag is not
// x-amz-copy-source-if-match (412), and copies the range when it is.
func TestMinIOCopyPartSourceIfMatch(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := openMultipart(t, srv)
	ctx := deltaCtx(t)
	c := srv.Client()
	data := randomBytes(20, testSize)
	etag := putVersion(t, s, "src", data)
	created, err := c.CreateMultipartUpload(ctx, &awss3.CreateMultipartUploadInput{Bucket: aws.String(bucket), Key: aws.String("dst")})
	if err != nil {
		t.Fatal(err)
	}
	copyPart := func(ifMatch string) error {
		_, err := c.UploadPartCopy(ctx, &awss3.UploadPartCopyInput{
			Bucket: aws.String(bucket), Key: aws.String("dst"), UploadId: created.UploadId, PartNumber: aws.Int32(1),
			CopySource:        aws.String(copySource(bucket, "src")),
			CopySourceIfMatch: quoteETag(ifMatch),
			CopySourceRange:   aws.String("bytes=0-5242879"),
		})
		return err
	}
	err = copyPart("0123456789abcdef0123456789abcdef")
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode() != "PreconditionFailed" || classify(err) != backend.ErrPrecondition {
		t.Fatalf("UploadPartCopy with a wrong x-amz-copy-source-if-match = %v; want 412 PreconditionFailed (does this MinIO ignore the header? then delta.go must check otherwise)", err)
	}
	if err := copyPart(etag); err != nil {
		t.Fatalf("UploadPartCopy with the right x-amz-copy-source-if-match: %v", err)
	}
	if err := abortAll(ctx, c, bucket); err != nil {
		t.Fatal(err)
	}
}

// TestDeltaPut edits one byte of a 17 MiB object: only the part holding it
// is read from the body and sent, the rest is copied server-side, and the
// result is the new content, byte for byte, with its metadata.
func TestDeltaPut(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := openMultipart(t, srv)
	ctx := deltaCtx(t)
	v1 := randomBytes(21, testSize)
	base := putVersion(t, s, "dir/big.bin", v1)
	ops := recordOps(s)

	const at = 7 * mib // in the second part, [5, 10) MiB
	v2 := edited(v1, at)
	body := &readLog{data: v2}
	same := []backend.Range{{Off: 0, Len: at}, {Off: at + 1, Len: testSize - at - 1}}
	meta := map[string]string{"nimbus-sha256": "abc", "mtime": "1700000000"}
	res, err := s.PutDelta(ctx, "dir/big.bin", body, testSize, meta, base, same)
	if err != nil {
		t.Fatalf("PutDelta: %v", err)
	}

	// [0,5) copied, [5,10) uploaded, [10,17) copied as one part.
	want := sortedOps([]string{"HeadObject", "CreateMultipartUpload", "UploadPartCopy", "UploadPart", "UploadPartCopy", "CompleteMultipartUpload"})
	if got := sortedOps(ops.take()); !slices.Equal(got, want) {
		t.Fatalf("requests = %v; want %v", got, want)
	}
	if got, want := body.read(), []backend.Range{{Off: 5 * mib, Len: 5 * mib}}; !slices.Equal(got, want) {
		t.Fatalf("body bytes read = %v; want only the changed part %v", got, want)
	}
	if res.Sent != 5*mib || res.Copied != testSize-5*mib || res.CopyParts != 2 {
		t.Fatalf("result: sent %d, copied %d in %d parts; want 5 MiB sent, 12 MiB copied in 2", res.Sent, res.Copied, res.CopyParts)
	}
	if res.Info.Key != "dir/big.bin" || res.Info.Size != testSize || !strings.HasSuffix(res.Info.ETag, "-3") {
		t.Fatalf("info = %+v; want the key, size %d, and a 3-part ETag", res.Info, testSize)
	}
	st, err := s.Stat(ctx, "dir/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	if st.ETag != res.Info.ETag || !maps.Equal(st.Meta, meta) {
		t.Fatalf("Stat = %+v; want ETag %s and meta %v", st, res.Info.ETag, meta)
	}
	if content(t, s, "dir/big.bin") != sha256.Sum256(v2) {
		t.Fatal("stored bytes differ from the new content")
	}
	wantNoOpenUploads(t, srv, bucket)

	// A second delta on the result (a multipart object itself) works the
	// same way: the edit chain continues from the new ETag.
	v3 := edited(v2, 0)
	res, err = s.PutDelta(ctx, "dir/big.bin", bytes.NewReader(v3), testSize, meta, st.ETag, []backend.Range{{Off: 1, Len: testSize - 1}})
	if err != nil {
		t.Fatalf("second PutDelta: %v", err)
	}
	if res.Sent != 5*mib || content(t, s, "dir/big.bin") != sha256.Sum256(v3) {
		t.Fatalf("second delta sent %d bytes (want 5 MiB) or stored the wrong bytes", res.Sent)
	}
}

// TestDeltaAppend: parts past the end of the base version are uploaded,
// even when the ranges claim more than the base holds.
func TestDeltaAppend(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := openMultipart(t, srv)
	ctx := deltaCtx(t)
	v2 := randomBytes(22, testSize)
	v1 := v2[:12*mib]
	for _, c := range []struct {
		name string
		same backend.Range
	}{
		{"Exact", backend.Range{Off: 0, Len: 12 * mib}},
		{"Overclaimed", backend.Range{Off: 0, Len: testSize}},
	} {
		t.Run(c.name, func(t *testing.T) {
			base := putVersion(t, s, "log", v1)
			body := &readLog{data: v2}
			res, err := s.PutDelta(ctx, "log", body, testSize, nil, base, []backend.Range{c.same})
			if err != nil {
				t.Fatalf("PutDelta: %v", err)
			}
			// [0,10) copied; [10,15) straddles the end of v1 and
			// [15,17) is past it: both uploaded.
			if got, want := body.read(), []backend.Range{{Off: 10 * mib, Len: 7 * mib}}; !slices.Equal(got, want) {
				t.Fatalf("body bytes read = %v; want %v", got, want)
			}
			if res.Sent != 7*mib || res.Copied != 10*mib || res.CopyParts != 1 {
				t.Fatalf("result %+v; want 7 MiB sent, 10 MiB copied in 1 part", res)
			}
			if content(t, s, "log") != sha256.Sum256(v2) {
				t.Fatal("stored bytes differ from the new content")
			}
			wantNoOpenUploads(t, srv, bucket)
		})
	}
}

// TestDeltaStaleBase: a base that is not the current version fails with
// ErrPrecondition after one HEAD, and nothing is written.
func TestDeltaStaleBase(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := openMultipart(t, srv)
	ops := recordOps(s)
	ctx := deltaCtx(t)
	v1 := randomBytes(23, testSize)
	old := putVersion(t, s, "k", v1)
	v2 := randomBytes(24, testSize)
	cur := putVersion(t, s, "k", v2)
	same := []backend.Range{{Off: 0, Len: testSize - 1}}

	t.Run("Stale", func(t *testing.T) {
		ops.take()
		_, err := s.PutDelta(ctx, "k", bytes.NewReader(edited(v1, testSize-1)), testSize, nil, old, same)
		if !errors.Is(err, backend.ErrPrecondition) {
			t.Fatalf("PutDelta on a stale base = %v; want ErrPrecondition", err)
		}
		if got := ops.take(); !slices.Equal(got, []string{"HeadObject"}) {
			t.Fatalf("requests = %v; want one HeadObject", got)
		}
		wantUntouched(t, s, "k", v2, cur)
		wantNoOpenUploads(t, srv, bucket)
	})
	t.Run("Absent", func(t *testing.T) {
		_, err := s.PutDelta(ctx, "absent", bytes.NewReader(v1), testSize, nil, old, same)
		if !errors.Is(err, backend.ErrPrecondition) {
			t.Fatalf("PutDelta of an absent key = %v; want ErrPrecondition", err)
		}
		if _, err := s.Stat(ctx, "absent"); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("Stat after the refused put = %v; want ErrNotFound", err)
		}
	})
}

// TestDeltaChangedDuringUpload changes the object after PutDelta's HEAD:
// before the copies, MinIO refuses them (x-amz-copy-source-if-match), and
// before the Complete, it refuses that (If-Match). Either way the other
// writer's version stays, and the upload is aborted.
func TestDeltaChangedDuringUpload(t *testing.T) {
	for _, op := range []string{"UploadPartCopy", "CompleteMultipartUpload"} {
		t.Run("Before"+op, func(t *testing.T) {
			srv := minio.Start(t)
			s, bucket := openMultipart(t, srv)
			ctx := deltaCtx(t)
			v1 := randomBytes(25, testSize)
			base := putVersion(t, s, "k", v1)
			// Same size as v1, so that nothing but the ETag can fail.
			other := randomBytes(26, testSize)
			var (
				once     sync.Once
				otherTag string
				hookErr  error
			)
			ops := recordOps(s)
			beforeOp(s, func(name string) {
				if name != op {
					return
				}
				once.Do(func() {
					out, err := srv.Client().PutObject(ctx, &awss3.PutObjectInput{
						Bucket: aws.String(bucket), Key: aws.String("k"), Body: bytes.NewReader(other),
					})
					if err != nil {
						hookErr = err
						return
					}
					otherTag = unquoteETag(out.ETag)
				})
			})
			v2 := edited(v1, 6*mib)
			_, err := s.PutDelta(ctx, "k", bytes.NewReader(v2), testSize, nil, base, []backend.Range{{Off: 0, Len: 6 * mib}, {Off: 6*mib + 1, Len: testSize - 6*mib - 1}})
			if hookErr != nil || otherTag == "" {
				t.Fatalf("the other writer did not write before %s: %v", op, hookErr)
			}
			if !errors.Is(err, backend.ErrPrecondition) {
				t.Fatalf("PutDelta over an object changed before %s = %v; want ErrPrecondition", op, err)
			}
			sent := ops.take()
			if op == "UploadPartCopy" && slices.Contains(sent, "CompleteMultipartUpload") {
				t.Fatalf("requests = %v: the copies from the changed object were accepted (MinIO ignored x-amz-copy-source-if-match)", sent)
			}
			wantUntouched(t, s, "k", other, otherTag)
			wantNoOpenUploads(t, srv, bucket)
		})
	}
}

// TestDeltaWhole: small objects, and objects with nothing to copy, are
// sent whole with the same condition.
func TestDeltaWhole(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := openMultipart(t, srv)
	ops := recordOps(s)
	ctx := deltaCtx(t)

	t.Run("Small", func(t *testing.T) {
		v1 := randomBytes(27, testThreshold)
		base := putVersion(t, s, "small", v1)
		v2 := edited(v1, 100)
		ops.take()
		res, err := s.PutDelta(ctx, "small", bytes.NewReader(v2), testThreshold, nil, base, []backend.Range{{Off: 0, Len: 100}})
		if err != nil {
			t.Fatal(err)
		}
		if got := ops.take(); len(got) != 0 {
			t.Fatalf("a delta of a small object went through the multipart path: %v", got)
		}
		if res.Sent != testThreshold || res.CopyParts != 0 || content(t, s, "small") != sha256.Sum256(v2) {
			t.Fatalf("result %+v; want the whole object sent and stored", res)
		}
		// Still conditional on the base.
		_, err = s.PutDelta(ctx, "small", bytes.NewReader(v1), testThreshold, nil, base, nil)
		if !errors.Is(err, backend.ErrPrecondition) {
			t.Fatalf("whole delta on a stale base = %v; want ErrPrecondition", err)
		}
		wantUntouched(t, s, "small", v2, res.Info.ETag)
	})
	t.Run("NothingToCopy", func(t *testing.T) {
		v1 := randomBytes(28, testSize)
		base := putVersion(t, s, "big", v1)
		v2 := edited(v1, 3*mib)
		ops.take()
		// No part lies inside the range.
		res, err := s.PutDelta(ctx, "big", bytes.NewReader(v2), testSize, nil, base, []backend.Range{{Off: 4 * mib, Len: 4 * mib}})
		if err != nil {
			t.Fatal(err)
		}
		got := ops.take()
		if len(got) == 0 || got[0] != "HeadObject" {
			t.Fatalf("requests = %v; want a HeadObject, then a multipart Put", got)
		}
		wantMultipart(t, got[1:])
		if res.Sent != testSize || res.CopyParts != 0 || content(t, s, "big") != sha256.Sum256(v2) {
			t.Fatalf("result %+v; want the whole object sent and stored", res)
		}
		wantNoOpenUploads(t, srv, bucket)
	})
}

// TestDeltaBadInput: malformed deltas fail before any request, with an
// error that is not a store condition.
func TestDeltaBadInput(t *testing.T) {
	// Nothing listens on port 1: any request would fail with ErrOffline.
	s, err := New(t.Context(), Config{Bucket: "b", Endpoint: "http://127.0.0.1:1", AccessKey: "a", SecretKey: "b"})
	if !errors.Is(err, backend.ErrOffline) {
		t.Fatalf("New = %v; want ErrOffline", err)
	}
	body := bytes.NewReader(make([]byte, 100))
	for _, c := range []struct {
		name string
		base string
		same []backend.Range
	}{
		{"no base", "", []backend.Range{{Off: 0, Len: 10}}},
		{"unsorted", "e", []backend.Range{{Off: 50, Len: 10}, {Off: 0, Len: 10}}},
		{"overlapping", "e", []backend.Range{{Off: 0, Len: 10}, {Off: 5, Len: 10}}},
		{"empty range", "e", []backend.Range{{Off: 0, Len: 0}}},
		{"negative", "e", []backend.Range{{Off: -1, Len: 10}}},
		{"past the end", "e", []backend.Range{{Off: 90, Len: 11}}},
	} {
		_, err := s.PutDelta(t.Context(), "k", body, 100, nil, c.base, c.same)
		if err == nil || errors.Is(err, backend.ErrOffline) || errors.Is(err, backend.ErrPrecondition) {
			t.Errorf("PutDelta with %s = %v; want a plain error before any request", c.name, err)
		}
	}
}

// TestDeltaCanceled cancels the ctx while the changed part is read: the
// put fails with context.Canceled, the upload is aborted, and the object
// is untouched.
func TestDeltaCanceled(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := openMultipart(t, srv)
	v1 := randomBytes(29, testSize)
	base := putVersion(t, s, "k", v1)
	ctx, cancel := context.WithCancel(deltaCtx(t))
	defer cancel()
	body := &readLog{data: edited(v1, 0), hook: func(int64) { cancel() }}
	_, err := s.PutDelta(ctx, "k", body, testSize, nil, base, []backend.Range{{Off: 1, Len: testSize - 1}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("PutDelta cancelled mid-upload = %v; want context.Canceled", err)
	}
	wantUntouched(t, s, "k", v1, base)
	wantNoOpenUploads(t, srv, bucket)
}

func TestPlanDelta(t *testing.T) {
	const gib = 1 << 30
	type part = deltaPart
	for _, c := range []struct {
		name           string
		size, partSize int64
		same           []backend.Range
		srcSize        int64
		want           []part
	}{
		{
			name: "one byte in the middle of 1 GiB", size: gib, partSize: 16 * mib, srcSize: gib,
			same: []backend.Range{{Off: 0, Len: gib / 2}, {Off: gib/2 + 1, Len: gib/2 - 1}},
			want: []part{{0, gib / 2, true}, {gib / 2, 16 * mib, false}, {gib/2 + 16*mib, gib/2 - 16*mib, true}},
		},
		{
			name: "a change across a part boundary", size: 64 * mib, partSize: 16 * mib, srcSize: 64 * mib,
			same: []backend.Range{{Off: 0, Len: 16*mib - 1}, {Off: 16*mib + 1, Len: 48*mib - 1}},
			want: []part{{0, 16 * mib, false}, {16 * mib, 16 * mib, false}, {32 * mib, 32 * mib, true}},
		},
		{
			name: "the last, short part copied", size: 40 * mib, partSize: 16 * mib, srcSize: 40 * mib,
			same: []backend.Range{{Off: 16 * mib, Len: 24 * mib}},
			want: []part{{0, 16 * mib, false}, {16 * mib, 24 * mib, true}},
		},
		{
			name: "nothing the same", size: 40 * mib, partSize: 16 * mib, srcSize: 40 * mib,
			want: []part{{0, 16 * mib, false}, {16 * mib, 16 * mib, false}, {32 * mib, 8 * mib, false}},
		},
		{
			name: "copies merge up to 5 GiB", size: 12 * gib, partSize: 1 * gib, srcSize: 12 * gib,
			same: []backend.Range{{Off: 0, Len: 12 * gib}},
			want: []part{{0, 5 * gib, true}, {5 * gib, 5 * gib, true}, {10 * gib, 2 * gib, true}},
		},
		{
			name: "parts past the base uploaded", size: 48 * mib, partSize: 16 * mib, srcSize: 20 * mib,
			same: []backend.Range{{Off: 0, Len: 48 * mib}},
			want: []part{{0, 16 * mib, true}, {16 * mib, 16 * mib, false}, {32 * mib, 16 * mib, false}},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := planDelta(c.size, c.partSize, c.same, c.srcSize)
			if !slices.Equal(got, c.want) {
				t.Fatalf("planDelta = %v; want %v", got, c.want)
			}
			var end int64
			for i, p := range got {
				if p.off != end || (i < len(got)-1 && p.n < minPartSize) || p.n > maxPartSize {
					t.Fatalf("part %d %+v breaks S3's rules (contiguous, at least 5 MiB but the last, at most 5 GiB)", i, p)
				}
				end = p.off + p.n
			}
			if end != c.size {
				t.Fatalf("parts end at %d; want %d", end, c.size)
			}
		})
	}
}

func TestPartSizeFor(t *testing.T) {
	if got := partSizeFor(1<<30, 16*mib); got != 16*mib {
		t.Errorf("partSizeFor(1 GiB) = %d; want the configured 16 MiB", got)
	}
	size := int64(200 << 30) // needs 12,800 parts of 16 MiB
	got := partSizeFor(size, 16*mib)
	if parts := (size + got - 1) / got; parts > maxUploadParts || got < 16*mib {
		t.Errorf("partSizeFor(200 GiB) = %d: %d parts; want at most %d", got, parts, maxUploadParts)
	}
}
