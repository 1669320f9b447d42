package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/middleware"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/integration/minio"
)

// Small multipart settings, so that a 17 MiB object is a 4-part upload.
const (
	testThreshold = 6 << 20
	testPartSize  = 5 << 20
	testSize      = 17 << 20
	testParts     = 4
)

// openMultipart returns a Store on a new bucket of srv with the small test
// multipart settings, and the bucket's name.
func openMultipart(t *testing.T, srv *minio.Server) (*Store, string) {
	t.Helper()
	bucket := minio.BucketName(t)
	srv.MakeBucket(t, bucket)
	s, err := New(t.Context(), Config{
		Bucket: bucket, Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey,
		MultipartThreshold: testThreshold, PartSize: testPartSize, UploadConcurrency: 4,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s, bucket
}

// randomBytes returns n bytes that depend only on seed.
func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)})
	if _, err := r.Read(b); err != nil {
		panic(err) // ChaCha8.Read never fails
	}
	return b
}

// opLog records the S3 operations the store's uploader sends.
type opLog struct {
	mu  sync.Mutex
	ops []string // GUARDED_BY(mu)
}

// beforeOp calls fn with the name of each operation s's uploader sends (the
// requests of a multipart Put, except putMultipart's own abort), before
// sending it.
func beforeOp(s *Store, fn func(op string)) {
	s.uploader.ClientOptions = append(s.uploader.ClientOptions, func(o *awss3.Options) {
		o.APIOptions = append(o.APIOptions, func(st *middleware.Stack) error {
			return st.Initialize.Add(middleware.InitializeMiddlewareFunc("nimbusBeforeOp",
				func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
					fn(strings.TrimSuffix(reflect.TypeOf(in.Parameters).Elem().Name(), "Input"))
					return next.HandleInitialize(ctx, in)
				}), middleware.After)
		})
	})
}

// recordOps starts recording the operations of s's uploader.
func recordOps(s *Store) *opLog {
	l := &opLog{}
	beforeOp(s, func(op string) {
		l.mu.Lock()
		l.ops = append(l.ops, op)
		l.mu.Unlock()
	})
	return l
}

// take returns the operations recorded since the last take.
func (l *opLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ops := l.ops
	l.ops = nil
	return ops
}

// wantMultipart fails the test unless ops is one multipart upload of
// testParts parts whose CompleteMultipartUpload (whose answer, then,
// decided the outcome) came after all the parts.
func wantMultipart(t *testing.T, ops []string) {
	t.Helper()
	want := []string{"CreateMultipartUpload"}
	for range testParts {
		want = append(want, "UploadPart")
	}
	want = append(want, "CompleteMultipartUpload")
	// An abort by the manager itself may follow.
	if got := slices.DeleteFunc(slices.Clone(ops), func(op string) bool { return op == "AbortMultipartUpload" }); !slices.Equal(got, want) {
		t.Fatalf("requests = %v; want CreateMultipartUpload, %d × UploadPart, CompleteMultipartUpload", ops, testParts)
	}
}

// openUploads lists the multipart uploads open in bucket.
func openUploads(t *testing.T, srv *minio.Server, bucket string) []string {
	t.Helper()
	out, err := srv.Client().ListMultipartUploads(t.Context(), &awss3.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatalf("ListMultipartUploads: %v", err)
	}
	var open []string
	for _, u := range out.Uploads {
		open = append(open, aws.ToString(u.Key)+" "+aws.ToString(u.UploadId))
	}
	return open
}

func wantNoOpenUploads(t *testing.T, srv *minio.Server, bucket string) {
	t.Helper()
	if open := openUploads(t, srv, bucket); len(open) != 0 {
		t.Fatalf("multipart uploads left open: %v", open)
	}
}

// content returns the sha256 of key's bytes.
func content(t *testing.T, s *Store, key string) [sha256.Size]byte {
	t.Helper()
	r, err := s.Get(t.Context(), key, 0, -1, "")
	if err != nil {
		t.Fatalf("Get %q: %v", key, err)
	}
	defer r.Close()
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		t.Fatalf("read %q: %v", key, err)
	}
	return [sha256.Size]byte(h.Sum(nil))
}

// wantUntouched fails the test unless key still holds data under etag.
func wantUntouched(t *testing.T, s *Store, key string, data []byte, etag string) {
	t.Helper()
	st, err := s.Stat(t.Context(), key)
	if err != nil {
		t.Fatalf("Stat %q: %v", key, err)
	}
	if st.ETag != etag || content(t, s, key) != sha256.Sum256(data) {
		t.Fatalf("%q was overwritten: ETag %s, want %s", key, st.ETag, etag)
	}
}

func TestMultipartRoundTrip(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := openMultipart(t, srv)
	ops := recordOps(s)
	ctx := t.Context()
	data := randomBytes(1, testSize)
	meta := map[string]string{"origin": "laptop", "mtime": "1700000000"}

	info, err := s.Put(ctx, "dir/big.bin", bytes.NewReader(data), testSize, meta, backend.Cond{IfNoneMatch: true})
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	wantMultipart(t, ops.take())
	if info.Key != "dir/big.bin" || info.Size != testSize {
		t.Fatalf("Put = %+v; want key dir/big.bin, size %d", info, testSize)
	}
	if strings.Contains(info.ETag, `"`) || !strings.HasSuffix(info.ETag, fmt.Sprintf("-%d", testParts)) {
		t.Fatalf("ETag = %s; want an unquoted multipart ETag ending in -%d", info.ETag, testParts)
	}
	st, err := s.Stat(ctx, "dir/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	if st.ETag != info.ETag || st.Size != testSize {
		t.Fatalf("Stat = %+v; want ETag %s and size %d as Put returned", st, info.ETag, testSize)
	}
	if got := content(t, s, "dir/big.bin"); got != sha256.Sum256(data) {
		t.Fatal("stored bytes differ from the body")
	}
	// The metadata reads back as that of a single PutObject does.
	if _, err := s.Put(ctx, "small", strings.NewReader("x"), 1, meta, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	small, err := s.Stat(ctx, "small")
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(st.Meta, meta) || !maps.Equal(st.Meta, small.Meta) {
		t.Fatalf("meta = %v; want %v, as a single put stores it (%v)", st.Meta, meta, small.Meta)
	}
	wantNoOpenUploads(t, srv, bucket)
}

// TestMultipartThreshold: up to the threshold a Put is one PutObject.
func TestMultipartThreshold(t *testing.T) {
	srv := minio.Start(t)
	s, _ := openMultipart(t, srv)
	ops := recordOps(s)
	if _, err := s.Put(t.Context(), "k", bytes.NewReader(make([]byte, testThreshold)), testThreshold, nil, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	if got := ops.take(); len(got) != 0 {
		t.Fatalf("a put of exactly the threshold went through the uploader: %v", got)
	}
	if _, err := s.Put(t.Context(), "k", bytes.NewReader(make([]byte, testSize)), testSize, nil, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	wantMultipart(t, ops.take())
}

// TestMultipartIfNoneMatch: the condition travels on the Complete request,
// and MinIO refuses it there when the key exists.
func TestMultipartIfNoneMatch(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := openMultipart(t, srv)
	ops := recordOps(s)
	ctx := t.Context()
	old := []byte("the remote version")
	base, err := s.Put(ctx, "k", bytes.NewReader(old), int64(len(old)), nil, backend.Cond{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Put(ctx, "k", bytes.NewReader(randomBytes(2, testSize)), testSize, nil, backend.Cond{IfNoneMatch: true})
	if !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("multipart If-None-Match put over an existing key = %v; want ErrPrecondition", err)
	}
	wantMultipart(t, ops.take())
	wantUntouched(t, s, "k", old, base.ETag)
	wantNoOpenUploads(t, srv, bucket)
}

func TestMultipartIfMatch(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := openMultipart(t, srv)
	ops := recordOps(s)
	ctx := t.Context()
	v1 := randomBytes(3, testSize)
	first, err := s.Put(ctx, "k", bytes.NewReader(v1), testSize, nil, backend.Cond{IfNoneMatch: true})
	if err != nil {
		t.Fatal(err)
	}
	v2 := randomBytes(4, testSize)
	second, err := s.Put(ctx, "k", bytes.NewReader(v2), testSize, nil, backend.Cond{IfMatch: first.ETag})
	if err != nil {
		t.Fatalf("multipart put with the current ETag: %v", err)
	}
	ops.take()
	if second.ETag == first.ETag || content(t, s, "k") != sha256.Sum256(v2) {
		t.Fatal("the put with the current ETag did not replace the object")
	}

	t.Run("Stale", func(t *testing.T) {
		_, err := s.Put(ctx, "k", bytes.NewReader(randomBytes(5, testSize)), testSize, nil, backend.Cond{IfMatch: first.ETag})
		if !errors.Is(err, backend.ErrPrecondition) {
			t.Fatalf("multipart put with a stale ETag = %v; want ErrPrecondition", err)
		}
		wantMultipart(t, ops.take())
		wantUntouched(t, s, "k", v2, second.ETag)
		wantNoOpenUploads(t, srv, bucket)
	})
	t.Run("Absent", func(t *testing.T) {
		_, err := s.Put(ctx, "absent", bytes.NewReader(randomBytes(6, testSize)), testSize, nil, backend.Cond{IfMatch: first.ETag})
		if !errors.Is(err, backend.ErrPrecondition) {
			t.Fatalf("multipart If-Match put of an absent key = %v; want ErrPrecondition", err)
		}
		wantMultipart(t, ops.take())
		if _, err := s.Stat(ctx, "absent"); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("Stat after the refused put = %v; want ErrNotFound", err)
		}
		wantNoOpenUploads(t, srv, bucket)
	})
}

// TestMultipartConcurrentIfMatch races writers that all hold the same ETag:
// all upload every part, and the store's check at Complete lets exactly
// one of them through.
func TestMultipartConcurrentIfMatch(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := openMultipart(t, srv)
	ctx := t.Context()
	base, err := s.Put(ctx, "k", strings.NewReader("base"), 4, nil, backend.Cond{})
	if err != nil {
		t.Fatal(err)
	}
	const writers = 4
	bodies := make([][]byte, writers)
	infos := make([]backend.ObjectInfo, writers)
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i := range writers {
		bodies[i] = randomBytes(uint64(10+i), testSize)
		wg.Go(func() {
			infos[i], errs[i] = s.Put(ctx, "k", bytes.NewReader(bodies[i]), testSize, nil, backend.Cond{IfMatch: base.ETag})
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("writers %d and %d both succeeded with If-Match %s", winner, i, base.ETag)
		case err == nil:
			winner = i
		case !errors.Is(err, backend.ErrPrecondition):
			t.Fatalf("writer %d: %v; want success or ErrPrecondition", i, err)
		}
	}
	if winner < 0 {
		t.Fatalf("no writer succeeded: %v", errs)
	}
	wantUntouched(t, s, "k", bodies[winner], infos[winner].ETag)
	wantNoOpenUploads(t, srv, bucket)
}

// TestMultipartShortBody: a body shorter than its size fails the put (as
// the caller's error, not ErrOffline), and the upload is aborted.
func TestMultipartShortBody(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := openMultipart(t, srv)
	_, err := s.Put(t.Context(), "k", bytes.NewReader(make([]byte, testSize-1)), testSize, nil, backend.Cond{})
	if err == nil || errors.Is(err, backend.ErrOffline) || !errors.Is(err, errShortBody) {
		t.Fatalf("multipart put with a short body = %v; want errShortBody, not ErrOffline", err)
	}
	if _, err := s.Stat(t.Context(), "k"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Stat after the failed put = %v; want ErrNotFound", err)
	}
	wantNoOpenUploads(t, srv, bucket)
}

// hookedReaderAt calls hook (once) on the first read at or past offset at.
type hookedReaderAt struct {
	r    *bytes.Reader
	at   int64
	once sync.Once
	hook func()
}

func (h *hookedReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= h.at {
		h.once.Do(h.hook)
	}
	return h.r.ReadAt(p, off)
}

func (h *hookedReaderAt) Read(p []byte) (int, error)                { return h.r.Read(p) }
func (h *hookedReaderAt) Seek(off int64, whence int) (int64, error) { return h.r.Seek(off, whence) }

// TestMultipartCanceled cancels the ctx while the parts are being sent: the
// put fails with context.Canceled, and the upload is aborted all the same.
func TestMultipartCanceled(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := openMultipart(t, srv)
	ops := recordOps(s)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	// Reading the second part means the upload is under way.
	body := &hookedReaderAt{r: bytes.NewReader(randomBytes(7, testSize)), at: testPartSize, hook: cancel}
	_, err := s.Put(ctx, "k", body, testSize, nil, backend.Cond{IfNoneMatch: true})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("put cancelled mid-upload = %v; want context.Canceled", err)
	}
	if got := ops.take(); len(got) == 0 || got[0] != "CreateMultipartUpload" {
		t.Fatalf("requests = %v; want a multipart upload begun before the cancel", got)
	}
	if _, err := s.Stat(t.Context(), "k"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Stat after the cancelled put = %v; want ErrNotFound", err)
	}
	wantNoOpenUploads(t, srv, bucket)
}

// TestMultipartUploadAbortedElsewhere: an upload aborted under the put (by
// a lifecycle rule, another client) makes a 404 NoSuchUpload. That must
// read as a retryable conflict, not as the If-Match precondition failing:
// that would make a conflicted copy of a file nobody else changed.
//
// The abort comes just before CompleteMultipartUpload: an UploadPart to an
// aborted upload gets its answer while still sending, and MinIO then resets
// the connection, which reads as ErrOffline whatever the answer said.
func TestMultipartUploadAbortedElsewhere(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := openMultipart(t, srv)
	ctx := t.Context()
	base, err := s.Put(ctx, "k", strings.NewReader("base"), 4, nil, backend.Cond{})
	if err != nil {
		t.Fatal(err)
	}
	aborted := make(chan error, 1)
	beforeOp(s, func(op string) {
		if op == "CompleteMultipartUpload" {
			aborted <- abortAll(ctx, srv.Client(), bucket)
		}
	})
	_, err = s.Put(ctx, "k", bytes.NewReader(randomBytes(8, testSize)), testSize, nil, backend.Cond{IfMatch: base.ETag})
	select {
	case abortErr := <-aborted:
		if abortErr != nil {
			t.Fatalf("aborting the upload from outside: %v", abortErr)
		}
	default:
		t.Fatal("the put never tried to complete its upload")
	}
	if !errors.Is(err, backend.ErrConflict) || errors.Is(err, backend.ErrPrecondition) || !backend.Retryable(err) {
		t.Fatalf("put whose upload was aborted elsewhere = %v; want ErrConflict (retryable), not ErrPrecondition", err)
	}
	wantUntouched(t, s, "k", []byte("base"), base.ETag)
	wantNoOpenUploads(t, srv, bucket)
}

// abortAll aborts every multipart upload open in bucket and reports how
// many it found (an error if none).
func abortAll(ctx context.Context, c *awss3.Client, bucket string) error {
	out, err := c.ListMultipartUploads(ctx, &awss3.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
	if err != nil {
		return err
	}
	if len(out.Uploads) == 0 {
		return errors.New("no multipart upload open")
	}
	for _, u := range out.Uploads {
		if _, err := c.AbortMultipartUpload(ctx, &awss3.AbortMultipartUploadInput{
			Bucket: aws.String(bucket), Key: u.Key, UploadId: u.UploadId,
		}); err != nil {
			return err
		}
	}
	return nil
}

// readAtOnlyBody serves its bytes only through ReadAt: a sequential Read,
// or a Seek other than asking for the position, fails.
type readAtOnlyBody struct {
	*bytes.Reader
	pos int64
}

func (b *readAtOnlyBody) Read([]byte) (int, error) {
	return 0, errors.New("sequential Read of a body that is an io.ReaderAt")
}

func (b *readAtOnlyBody) Seek(off int64, whence int) (int64, error) {
	if off != 0 || whence != io.SeekCurrent {
		return 0, errors.New("Seek of a body that is an io.ReaderAt")
	}
	return b.pos, nil
}

// seekOnlyBody hides the ReadAt of a bytes.Reader.
type seekOnlyBody struct{ io.ReadSeeker }

// TestMultipartBody: the parts are read with ReadAt when the body has it,
// and from the body's current position, whatever the kind of body.
func TestMultipartBody(t *testing.T) {
	srv := minio.Start(t)
	s, _ := openMultipart(t, srv)
	ctx := t.Context()
	const skip = 1000
	// Bytes before the position and after size must not be sent.
	file := randomBytes(9, skip+testSize+100)
	want := sha256.Sum256(file[skip : skip+testSize])

	bodies := map[string]func(t *testing.T) io.ReadSeeker{
		"ReaderAt": func(t *testing.T) io.ReadSeeker {
			return &readAtOnlyBody{Reader: bytes.NewReader(file), pos: skip}
		},
		"File": func(t *testing.T) io.ReadSeeker {
			f, err := os.Create(filepath.Join(t.TempDir(), "staged"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := f.Close(); err != nil {
					t.Error(err)
				}
			})
			if _, err := f.Write(file); err != nil {
				t.Fatal(err)
			}
			if _, err := f.Seek(skip, io.SeekStart); err != nil {
				t.Fatal(err)
			}
			return f
		},
		"SeekOnly": func(t *testing.T) io.ReadSeeker {
			r := bytes.NewReader(file)
			if _, err := r.Seek(skip, io.SeekStart); err != nil {
				t.Fatal(err)
			}
			return seekOnlyBody{r}
		},
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			info, err := s.Put(ctx, name, body(t), testSize, nil, backend.Cond{})
			if err != nil {
				t.Fatalf("Put: %v", err)
			}
			if info.Size != testSize || content(t, s, name) != want {
				t.Fatalf("the stored object (size %d) is not the %d bytes at the body's position", info.Size, testSize)
			}
		})
	}
}

// TestMultipartOffline: an unreachable store fails a multipart put fast,
// with ErrOffline, as it does a single one.
func TestMultipartOffline(t *testing.T) {
	srv := minio.Start(t)
	s, _ := openMultipart(t, srv)
	srv.Stop()
	start := time.Now()
	_, err := s.Put(t.Context(), "k", bytes.NewReader(make([]byte, testSize)), testSize, nil, backend.Cond{IfNoneMatch: true})
	if !errors.Is(err, backend.ErrOffline) || !backend.Retryable(err) {
		t.Fatalf("multipart put while the server is down = %v; want ErrOffline", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("multipart put took %v to fail; want under 3s", d)
	}
}

func TestMultipartConfig(t *testing.T) {
	ctx := t.Context()
	// Nothing listens on port 1: New returns the store with ErrOffline,
	// after checking the configuration.
	base := Config{Bucket: "b", Endpoint: "http://127.0.0.1:1", AccessKey: "a", SecretKey: "b"}
	s, err := New(ctx, base)
	if !errors.Is(err, backend.ErrOffline) {
		t.Fatalf("New = %v; want ErrOffline", err)
	}
	if s.multipartThreshold != 64<<20 || s.uploader.PartSize != 16<<20 || s.uploader.Concurrency != 8 || !s.uploader.LeavePartsOnError {
		t.Fatalf("defaults: threshold %d, part size %d, concurrency %d, leave parts %v; want 64 MiB, 16 MiB, 8, true",
			s.multipartThreshold, s.uploader.PartSize, s.uploader.Concurrency, s.uploader.LeavePartsOnError)
	}
	for _, c := range []struct {
		name string
		set  func(*Config)
	}{
		{"part under 5 MiB", func(c *Config) { c.PartSize = 5<<20 - 1 }},
		{"part over 5 GiB", func(c *Config) { c.PartSize = 5<<30 + 1 }},
		{"negative threshold", func(c *Config) { c.MultipartThreshold = -1 }},
		{"threshold over 5 GiB", func(c *Config) { c.MultipartThreshold = 5<<30 + 1 }},
		{"negative concurrency", func(c *Config) { c.UploadConcurrency = -1 }},
	} {
		cfg := base
		c.set(&cfg)
		if _, err := New(ctx, cfg); err == nil || errors.Is(err, backend.ErrOffline) {
			t.Errorf("New with %s = %v; want a configuration error", c.name, err)
		}
	}
}
