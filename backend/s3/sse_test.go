package s3

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/integration/minio"
)

// testKMSKey is MinIO's built-in KMS key for the SSE-KMS tests.
var testKMSKey = "nimbus-key:" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))

// openEncrypted returns a Store with enc (and the small multipart settings)
// on bucket of srv. A TLS server's certificate is trusted through
// AWS_CA_BUNDLE, as nimbus users do it.
func openEncrypted(t *testing.T, srv *minio.Server, bucket string, enc Encryption) *Store {
	t.Helper()
	if srv.CAFile != "" {
		t.Setenv("AWS_CA_BUNDLE", srv.CAFile)
	}
	s, err := New(t.Context(), Config{
		Bucket: bucket, Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey,
		MultipartThreshold: testThreshold, PartSize: testPartSize, UploadConcurrency: 4,
		CopyThreshold: testThreshold, Encryption: enc,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

// headSSE returns the encryption the store reports for key, asked by a
// plain client (with the customer key headers when key is set).
func headSSE(t *testing.T, srv *minio.Server, bucket, key string, ck CustomerKey) (types.ServerSideEncryption, string, error) {
	t.Helper()
	in := &awss3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}
	if ck != nil {
		h := Encryption{CustomerKey: ck}.headers()
		in.SSECustomerAlgorithm, in.SSECustomerKey, in.SSECustomerKeyMD5 = h.cAlg, h.cKey, h.cMD5
	}
	out, err := srv.Client().HeadObject(t.Context(), in)
	if err != nil {
		return "", "", err
	}
	return out.ServerSideEncryption, aws.ToString(out.SSECustomerAlgorithm), nil
}

// TestSSEKMS: with Encryption SSE aws:kms, every way of writing an object
// (PutObject, multipart, CopyObject, a multipart copy, a delta) leaves it
// encrypted with the KMS key, as a HEAD shows; AES256 likewise.
func TestSSEKMS(t *testing.T) {
	srv := minio.StartWith(t, minio.Options{KMSSecretKey: testKMSKey})
	bucket := minio.BucketName(t)
	srv.MakeBucket(t, bucket)
	ctx := deltaCtx(t)
	for _, enc := range []Encryption{{SSE: SSEKMS, KMSKeyID: "nimbus-key"}, {SSE: SSES3}} {
		t.Run(enc.SSE, func(t *testing.T) {
			s := openEncrypted(t, srv, bucket, enc)
			p := strings.ReplaceAll(enc.SSE, ":", "-") + "/"
			small := []byte("small and secret")
			putVersion(t, s, p+"small", small)
			big := randomBytes(5, testSize)
			base := putVersion(t, s, p+"big", big)
			if _, err := s.Copy(ctx, p+"small", "", p+"copy", backend.Cond{IfNoneMatch: true}); err != nil {
				t.Fatalf("Copy: %v", err)
			}
			if _, err := s.Copy(ctx, p+"big", "", p+"bigcopy", backend.Cond{IfNoneMatch: true}); err != nil {
				t.Fatalf("multipart Copy: %v", err)
			}
			v2 := edited(big, 7*mib)
			if _, err := s.PutDelta(ctx, p+"big", bytes.NewReader(v2), testSize, nil, base, []backend.Range{{Off: 0, Len: 7 * mib}, {Off: 7*mib + 1, Len: testSize - 7*mib - 1}}); err != nil {
				t.Fatalf("PutDelta: %v", err)
			}
			for _, key := range []string{p + "small", p + "copy", p + "big", p + "bigcopy"} {
				sse, _, err := headSSE(t, srv, bucket, key, nil)
				if err != nil {
					t.Fatalf("HEAD %s: %v", key, err)
				}
				if string(sse) != enc.SSE {
					t.Errorf("%s: server-side encryption %q; want %q", key, sse, enc.SSE)
				}
			}
			if content(t, s, p+"big") != sha256.Sum256(v2) || content(t, s, p+"copy") != sha256.Sum256(small) || content(t, s, p+"bigcopy") != sha256.Sum256(big) {
				t.Fatal("encrypted objects read back wrong")
			}
		})
	}
}

// TestSSEC: with a customer key, objects are written and read with it
// (PutObject, multipart, CopyObject, a delta whose parts are copied with
// UploadPartCopy); without the key, or with another, the store refuses to
// read them, as ErrAccess saying a key is needed.
func TestSSEC(t *testing.T) {
	srv := minio.StartWith(t, minio.Options{TLS: true})
	if !strings.HasPrefix(srv.Endpoint, "https://") {
		t.Fatalf("endpoint %s is not TLS", srv.Endpoint)
	}
	bucket := minio.BucketName(t)
	srv.MakeBucket(t, bucket)
	ctx := deltaCtx(t)
	key := CustomerKey(bytes.Repeat([]byte{0x5a}, 32))
	s := openEncrypted(t, srv, bucket, Encryption{CustomerKey: key})

	small := []byte("only with the key")
	putVersion(t, s, "small", small)
	big := randomBytes(9, testSize)
	base := putVersion(t, s, "big", big)
	if _, err := s.Copy(ctx, "small", "", "copy", backend.Cond{IfNoneMatch: true}); err != nil {
		t.Fatalf("Copy: %v", err)
	}
	v2 := edited(big, 7*mib)
	res, err := s.PutDelta(ctx, "big", bytes.NewReader(v2), testSize, nil, base, []backend.Range{{Off: 0, Len: 7 * mib}, {Off: 7*mib + 1, Len: testSize - 7*mib - 1}})
	if err != nil {
		t.Fatalf("PutDelta: %v", err)
	}
	if res.CopyParts != 2 {
		t.Fatalf("delta copied %d parts server-side; want 2", res.CopyParts)
	}
	// A copy over the copy threshold goes in parts: each UploadPartCopy
	// carries the key of the new object and of its source.
	var copyParts, keyed int
	var mu sync.Mutex
	beforeInput(s, func(in any) {
		if p, ok := in.(*awss3.UploadPartCopyInput); ok {
			mu.Lock()
			copyParts++
			if p.SSECustomerKey != nil && p.CopySourceSSECustomerKey != nil && p.CopySourceSSECustomerKeyMD5 != nil {
				keyed++
			}
			mu.Unlock()
		}
	})
	if _, err := s.Copy(ctx, "big", "", "bigcopy", backend.Cond{IfNoneMatch: true}); err != nil {
		t.Fatalf("multipart Copy: %v", err)
	}
	if copyParts != testCopyParts || keyed != copyParts {
		t.Fatalf("multipart Copy: %d UploadPartCopy, %d with both keys; want %d, all", copyParts, keyed, testCopyParts)
	}
	if content(t, s, "big") != sha256.Sum256(v2) || content(t, s, "copy") != sha256.Sum256(small) || content(t, s, "small") != sha256.Sum256(small) || content(t, s, "bigcopy") != sha256.Sum256(v2) {
		t.Fatal("SSE-C objects read back wrong")
	}
	r, err := s.Get(ctx, "big", 7*mib-2, 4, "")
	if err != nil {
		t.Fatalf("ranged Get: %v", err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, v2[7*mib-2:7*mib+2]) {
		t.Fatalf("ranged Get = %x, %v; want %x", got, err, v2[7*mib-2:7*mib+2])
	}
	for _, k := range []string{"small", "copy", "big", "bigcopy"} {
		if _, alg, err := headSSE(t, srv, bucket, k, key); err != nil || alg != "AES256" {
			t.Fatalf("HEAD %s with the key: algorithm %q, %v; want AES256", k, alg, err)
		}
		if _, _, err := headSSE(t, srv, bucket, k, nil); err == nil {
			t.Fatalf("HEAD %s without the key succeeded", k)
		}
	}

	other := CustomerKey(bytes.Repeat([]byte{0x11}, 32))
	for name, enc := range map[string]Encryption{"NoKey": {}, "WrongKey": {CustomerKey: other}} {
		t.Run(name, func(t *testing.T) {
			s2 := openEncrypted(t, srv, bucket, enc)
			_, statErr := s2.Stat(ctx, "small")
			_, getErr := s2.Get(ctx, "small", 0, -1, "")
			for op, err := range map[string]error{"Stat": statErr, "Get": getErr} {
				// S3 answers a wrong key with a plain 403: the message
				// can only suggest the key.
				if !errors.Is(err, backend.ErrAccess) || !strings.Contains(err.Error(), "--sse-c-key-file") {
					t.Errorf("%s without the right key = %v; want ErrAccess saying a key is needed", op, err)
				}
			}
		})
	}
}

// TestCustomerKeyNeverPrinted: the key formats as [redacted] however it is
// printed or logged, and a bad key file's error does not show its content.
func TestCustomerKeyNeverPrinted(t *testing.T) {
	raw := bytes.Repeat([]byte("k"), 32)
	k, err := ParseCustomerKey([]byte(base64.StdEncoding.EncodeToString(raw) + "\n"))
	if err != nil || !bytes.Equal(k, raw) {
		t.Fatalf("ParseCustomerKey(base64) = %x, %v", k, err)
	}
	if k2, err := ParseCustomerKey(raw); err != nil || !bytes.Equal(k2, raw) {
		t.Fatalf("ParseCustomerKey(raw) = %x, %v", k2, err)
	}
	enc := Encryption{CustomerKey: k}
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "key", k, "enc", enc)
	for _, out := range []string{fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s %x", enc, enc, enc, k, k), logged.String()} {
		if strings.Contains(out, "kkkk") || strings.Contains(out, "6b6b") || strings.Contains(out, base64.StdEncoding.EncodeToString(raw)[:8]) {
			t.Fatalf("the key shows in %q", out)
		}
	}
	if _, err := ParseCustomerKey([]byte("secretsecret")); err == nil || strings.Contains(err.Error(), "secret") {
		t.Fatalf("bad key error = %v; want one that hides the content", err)
	}
}

// TestPresignRefusesCustomerKey: a presigned URL would carry the SSE-C key.
func TestPresignRefusesCustomerKey(t *testing.T) {
	s := &Store{customerKey: true, name: "s3://x"}
	if _, err := s.PresignGet(t.Context(), "k", 60e9); err == nil || !strings.Contains(err.Error(), "SSE-C") {
		t.Fatalf("PresignGet with SSE-C = %v; want a refusal naming SSE-C", err)
	}
}
