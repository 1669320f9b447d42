package s3

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/conformance"
	"github.com/nimbus-fs/nimbus/integration/minio"
)

// open returns a Store on a new bucket of srv.
func open(t *testing.T, srv *minio.Server) (*Store, string) {
	t.Helper()
	bucket := minio.BucketName(t)
	srv.MakeBucket(t, bucket)
	s, err := New(t.Context(), Config{
		Bucket: bucket, Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s, bucket
}

func TestConformance(t *testing.T) {
	srv := minio.Start(t)
	conformance.Run(t, func(t *testing.T) backend.Backend {
		s, _ := open(t, srv)
		return s
	})
}

func TestNewErrors(t *testing.T) {
	srv := minio.Start(t)
	ctx := t.Context()
	_, bucket := open(t, srv)

	t.Run("UnknownBucket", func(t *testing.T) {
		_, err := New(ctx, Config{Bucket: "no-such-bucket", Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey})
		if !errors.Is(err, backend.ErrNoBucket) {
			t.Fatalf("New = %v; want ErrNoBucket", err)
		}
		if want := fmt.Sprintf("bucket %q not found at %s", "no-such-bucket", srv.Endpoint); err.Error() != want {
			t.Fatalf("message = %q; want %q", err, want)
		}
	})
	t.Run("WrongSecret", func(t *testing.T) {
		_, err := New(ctx, Config{Bucket: bucket, Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: "wrong-secret"})
		if !errors.Is(err, backend.ErrAccess) {
			t.Fatalf("New = %v; want ErrAccess", err)
		}
		if strings.Contains(err.Error(), "wrong-secret") || strings.Contains(err.Error(), srv.SecretKey) {
			t.Fatalf("message %q holds a secret", err)
		}
	})
	t.Run("UnknownAccessKey", func(t *testing.T) {
		_, err := New(ctx, Config{Bucket: bucket, Endpoint: srv.Endpoint, AccessKey: "nobody", SecretKey: srv.SecretKey})
		if !errors.Is(err, backend.ErrAccess) {
			t.Fatalf("New = %v; want ErrAccess", err)
		}
	})
	t.Run("Unreachable", func(t *testing.T) {
		start := time.Now()
		st, err := New(ctx, Config{Bucket: bucket, Endpoint: "http://127.0.0.1:1", AccessKey: "a", SecretKey: "b"})
		if !errors.Is(err, backend.ErrOffline) {
			t.Fatalf("New = %v; want ErrOffline", err)
		}
		if st == nil {
			t.Fatalf("New returned no store with ErrOffline: a mount could not start offline")
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("New took %v to fail; want under 3s", d)
		}
		if !strings.Contains(err.Error(), "http://127.0.0.1:1") {
			t.Fatalf("message %q does not name the endpoint", err)
		}
	})
	t.Run("BadConfig", func(t *testing.T) {
		for _, cfg := range []Config{
			{Endpoint: srv.Endpoint},
			{Bucket: bucket, Endpoint: "127.0.0.1:9000"},
			{Bucket: bucket, Endpoint: "ftp://127.0.0.1"},
			{Bucket: bucket, Endpoint: srv.Endpoint, AccessKey: "only-half"},
		} {
			if _, err := New(ctx, cfg); err == nil || errors.Is(err, backend.ErrOffline) {
				t.Errorf("New(%+v) = %v; want a configuration error", cfg, err)
			}
		}
	})
}

// TestStandardCredentialChain opens the store with credentials from the
// environment, as the nimbus binary does, and with AWS_CA_BUNDLE set (the
// loader must accept our HTTP client and plain http must still work).
// TestOpenBucketWithOddFirstKey opens a bucket whose first key holds a
// character XML 1.0 cannot carry: the probe listing must still parse.
func TestOpenBucketWithOddFirstKey(t *testing.T) {
	srv := minio.Start(t)
	s, bucket := open(t, srv)
	if _, err := s.Put(t.Context(), "\x01first", strings.NewReader("x"), 1, nil, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(t.Context(), Config{Bucket: bucket, Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey}); err != nil {
		t.Fatalf("New on a bucket whose first key is \\x01first: %v", err)
	}
}

func TestStandardCredentialChain(t *testing.T) {
	srv := minio.Start(t)
	bucket := minio.BucketName(t)
	srv.MakeBucket(t, bucket)
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
	t.Setenv("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
	s, err := New(t.Context(), Config{Bucket: bucket, Endpoint: srv.Endpoint})
	if err != nil {
		t.Fatalf("New with env credentials: %v", err)
	}
	if want := "s3://" + bucket + " at " + srv.Endpoint; s.String() != want {
		t.Fatalf("String() = %q; want %q", s.String(), want)
	}
	if _, err := s.Put(t.Context(), "k", strings.NewReader("x"), 1, nil, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	if region := s.client.Options().Region; region != minio.Region {
		t.Fatalf("region = %q; want %q from AWS_REGION", region, minio.Region)
	}
}

func TestDefaultRegion(t *testing.T) {
	srv := minio.Start(t)
	bucket := minio.BucketName(t)
	srv.MakeBucket(t, bucket)
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent")
	t.Setenv("AWS_PROFILE", "")
	s, err := New(t.Context(), Config{Bucket: bucket, Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	if region := s.client.Options().Region; region != "us-east-1" {
		t.Fatalf("region = %q; want us-east-1", region)
	}
	s, err = New(t.Context(), Config{Bucket: bucket, Endpoint: srv.Endpoint, Region: "eu-west-3", AccessKey: srv.AccessKey, SecretKey: srv.SecretKey})
	// MinIO does not care which region a request is signed for.
	if err != nil {
		t.Fatal(err)
	}
	if region := s.client.Options().Region; region != "eu-west-3" {
		t.Fatalf("region = %q; want the configured eu-west-3", region)
	}
}

// TestOffline stops the server under an open store: every operation must
// fail fast with ErrOffline, and work again once the server is back.
func TestOffline(t *testing.T) {
	srv := minio.Start(t)
	s, _ := open(t, srv)
	ctx := t.Context()
	if _, err := s.Put(ctx, "k", strings.NewReader("data"), 4, nil, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	srv.Stop()

	ops := map[string]func() error{
		"Stat": func() error { _, err := s.Stat(ctx, "k"); return err },
		"Get":  func() error { _, err := s.Get(ctx, "k", 0, -1, ""); return err },
		"List": func() error { return s.List(ctx, "", func(backend.Page) error { return nil }) },
		"Put": func() error {
			_, err := s.Put(ctx, "k2", strings.NewReader("x"), 1, nil, backend.Cond{IfNoneMatch: true})
			return err
		},
		"Copy":   func() error { _, err := s.Copy(ctx, "k", "", "k3", backend.Cond{}); return err },
		"Delete": func() error { return s.Delete(ctx, "k", "") },
	}
	for name, op := range ops {
		start := time.Now()
		err := op()
		if !errors.Is(err, backend.ErrOffline) || !backend.Retryable(err) {
			t.Errorf("%s while the server is down = %v; want ErrOffline", name, err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%s took %v to fail; want under 3s", name, d)
		}
	}

	srv.Restart()
	if st, err := s.Stat(ctx, "k"); err != nil || st.Size != 4 {
		t.Fatalf("Stat after restart = %+v, %v", st, err)
	}
}

// TestConnectionBreaksMidBody kills the server while a large body is being
// read: the read fails with ErrOffline, not a bare unexpected EOF.
func TestConnectionBreaksMidBody(t *testing.T) {
	srv := minio.Start(t)
	s, _ := open(t, srv)
	ctx := t.Context()
	const size = 64 << 20
	if _, err := s.Put(ctx, "big", io.NewSectionReader(zeroReaderAt{}, 0, size), size, nil, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Get(ctx, "big", 0, -1, "")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadFull(r, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	n, err := io.Copy(io.Discard, r)
	if err == nil {
		t.Skipf("the whole body (%d more bytes) was buffered before the kill", n)
	}
	if !errors.Is(err, backend.ErrOffline) {
		t.Fatalf("read after the kill = %v; want ErrOffline", err)
	}
}

type zeroReaderAt struct{}

func (zeroReaderAt) ReadAt(p []byte, _ int64) (int, error) {
	clear(p)
	return len(p), nil
}

func TestPresignGet(t *testing.T) {
	srv := minio.Start(t)
	s, _ := open(t, srv)
	ctx := t.Context()
	if _, err := s.Put(ctx, "dir/shared file.txt", strings.NewReader("shared"), 6, nil, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	u, err := s.PresignGet(ctx, "dir/shared file.txt", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(u, srv.SecretKey) {
		t.Fatal("presigned URL holds the secret key")
	}
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != "shared" {
		t.Fatalf("GET presigned URL: %s %q %v", resp.Status, body, err)
	}
	for _, d := range []time.Duration{0, -time.Second, 8 * 24 * time.Hour} {
		if _, err := s.PresignGet(ctx, "k", d); err == nil {
			t.Errorf("PresignGet(expires %v) succeeded", d)
		}
	}
}

func TestPutShortBody(t *testing.T) {
	srv := minio.Start(t)
	s, _ := open(t, srv)
	_, err := s.Put(t.Context(), "k", strings.NewReader("abc"), 10, nil, backend.Cond{})
	if err == nil || errors.Is(err, backend.ErrOffline) {
		t.Fatalf("Put with a short body = %v; want a plain error", err)
	}
	if _, err := s.Stat(t.Context(), "k"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Stat after the failed put = %v; want ErrNotFound", err)
	}
	// Only size bytes are sent, from the current position.
	body := strings.NewReader("skip:payload+extra")
	if _, err := body.Seek(5, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(t.Context(), "k", body, 7, nil, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Get(t.Context(), "k", 0, -1, "")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got, err := io.ReadAll(r); err != nil || string(got) != "payload" {
		t.Fatalf("stored %q, %v; want %q", got, err, "payload")
	}
}

func TestSizedBody(t *testing.T) {
	r := strings.NewReader("0123456789")
	if _, err := r.Seek(2, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	b, err := newSizedBody(r, 5)
	if err != nil {
		t.Fatal(err)
	}
	read := func() string {
		t.Helper()
		got, err := io.ReadAll(b)
		if err != nil {
			t.Fatal(err)
		}
		return string(got)
	}
	if got := read(); got != "23456" {
		t.Fatalf("read %q; want 23456", got)
	}
	if pos, err := b.Seek(0, io.SeekStart); err != nil || pos != 0 {
		t.Fatalf("Seek(0, start) = %d, %v", pos, err)
	}
	if got := read(); got != "23456" {
		t.Fatalf("after rewind read %q; want 23456", got)
	}
	if pos, err := b.Seek(-2, io.SeekEnd); err != nil || pos != 3 {
		t.Fatalf("Seek(-2, end) = %d, %v; want 3", pos, err)
	}
	if got := read(); got != "56" {
		t.Fatalf("read %q; want 56", got)
	}
	if _, err := b.Seek(-1, io.SeekStart); err == nil {
		t.Fatal("Seek to -1 succeeded")
	}
	short, err := newSizedBody(strings.NewReader("ab"), 5)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(short); !errors.Is(err, errShortBody) {
		t.Fatalf("short body read error = %v; want errShortBody", err)
	}
}

func TestClassify(t *testing.T) {
	// An answer without a recognised code is classified by its status.
	respErr := func(status int) error {
		return &awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}},
			Err:      errors.New("no body"),
		}}
	}
	cases := []struct {
		name string
		err  error
		want error
	}{
		{"NoSuchKey", &smithy.GenericAPIError{Code: "NoSuchKey"}, backend.ErrNotFound},
		{"NoSuchBucket", &smithy.GenericAPIError{Code: "NoSuchBucket"}, backend.ErrNoBucket},
		{"PreconditionFailed", &smithy.GenericAPIError{Code: "PreconditionFailed"}, backend.ErrPrecondition},
		{"ConditionalRequestConflict", &smithy.GenericAPIError{Code: "ConditionalRequestConflict"}, backend.ErrConflict},
		{"SignatureDoesNotMatch", &smithy.GenericAPIError{Code: "SignatureDoesNotMatch"}, backend.ErrAccess},
		{"InvalidAccessKeyId", &smithy.GenericAPIError{Code: "InvalidAccessKeyId"}, backend.ErrAccess},
		{"KeyTooLongError", &smithy.GenericAPIError{Code: "KeyTooLongError"}, backend.ErrInvalidKey},
		{"InternalError", &smithy.GenericAPIError{Code: "InternalError"}, nil},
		{"refused", &smithyhttp.RequestSendError{Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}, backend.ErrOffline},
		{"reset", fmt.Errorf("read: %w", syscall.ECONNRESET), backend.ErrOffline},
		{"dns", &net.DNSError{Err: "no such host", Name: "x", IsNotFound: true}, backend.ErrOffline},
		{"unexpected EOF", fmt.Errorf("deserialize: %w", io.ErrUnexpectedEOF), backend.ErrOffline},
		{"bad certificate", &smithyhttp.RequestSendError{Err: x509.UnknownAuthorityError{}}, nil},
		{"short body", &smithyhttp.RequestSendError{Err: fmt.Errorf("%w: 3 of 10", errShortBody)}, nil},
		{"plain", errors.New("something else"), nil},
		{"404", respErr(404), backend.ErrNotFound},
		{"412", respErr(412), backend.ErrPrecondition},
		{"409", respErr(409), backend.ErrConflict},
		{"403", respErr(403), backend.ErrAccess},
		{"401", respErr(401), backend.ErrAccess},
		{"503", respErr(503), backend.ErrOffline},
		{"500", respErr(500), nil},
		{"400", respErr(400), nil},
	}
	for _, c := range cases {
		if got := classify(c.err); got != c.want {
			t.Errorf("classify(%s) = %v; want %v", c.name, got, c.want)
		}
	}
}

func TestCopySource(t *testing.T) {
	if got, want := copySource("bkt", "a dir/ü+x?.txt"), "bkt/a%20dir/%C3%BC+x%3F.txt"; got != want {
		t.Fatalf("copySource = %q; want %q", got, want)
	}
}

func TestCheckKey(t *testing.T) {
	for _, key := range []string{"", strings.Repeat("k", 1025), "bad\xff"} {
		if err := checkKey("put", key); !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("checkKey(%.20q) = %v; want ErrInvalidKey", key, err)
		}
	}
	if err := checkKey("put", strings.Repeat("k", 1024)); err != nil {
		t.Errorf("checkKey(1024 bytes) = %v", err)
	}
}
