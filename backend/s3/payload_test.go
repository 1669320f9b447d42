package s3

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/nimbus-fs/nimbus/backend"
)

func TestLoopbackEndpoint(t *testing.T) {
	for endpoint, want := range map[string]bool{
		"http://127.0.0.1:9000":          true,
		"http://127.8.9.10":              true,
		"http://localhost:9000":          true,
		"http://LOCALHOST":               true,
		"http://[::1]:9000":              true,
		"https://127.0.0.1:9443":         true,
		"http://10.0.0.5:9000":           false,
		"http://localhost.example.com":   false,
		"https://s3.eu-west-1.amazonaws": false,
		"http://[::ffff:10.0.0.5]:9000":  false,
		"":                               false,
	} {
		if got := loopbackEndpoint(endpoint); got != want {
			t.Errorf("loopbackEndpoint(%q) = %v, want %v", endpoint, got, want)
		}
	}
}

// payloadRecorder answers every request with 200 and an ETag, sending
// nothing anywhere, and records each request's x-amz-content-sha256.
type payloadRecorder struct {
	mu     sync.Mutex
	hashes map[string]string // "PUT object" or "PUT part" → header
}

func (p *payloadRecorder) RoundTrip(r *http.Request) (*http.Response, error) {
	what := r.Method + " object"
	if r.URL.Query().Has("partNumber") {
		what = r.Method + " part"
	}
	p.mu.Lock()
	p.hashes[what] = r.Header.Get("X-Amz-Content-Sha256")
	p.mu.Unlock()
	if r.Body != nil {
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	return &http.Response{
		StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:  http.Header{"Etag": {`"0123456789abcdef"`}},
		Body:    io.NopCloser(strings.NewReader("")),
		Request: r,
	}, nil
}

// TestBodiesAreSignedUnlessLoopback: a body sent to a loopback endpoint is
// unsigned, as over TLS; one sent over plain HTTP anywhere else carries its
// SHA-256. Both a PutObject and an UploadPart. No request leaves the
// process: the transport answers them.
func TestBodiesAreSignedUnlessLoopback(t *testing.T) {
	body := []byte("the content of a small object")
	sum := sha256.Sum256(body)
	signed := hex.EncodeToString(sum[:])
	for endpoint, want := range map[string]string{
		"http://127.0.0.1:9000":         "UNSIGNED-PAYLOAD",
		"http://[::1]:9000":             "UNSIGNED-PAYLOAD",
		"http://s3.nimbus.invalid:9000": signed,
	} {
		rec := &payloadRecorder{hashes: map[string]string{}}
		cfg, err := withMultipartDefaults(Config{Bucket: "b", Endpoint: endpoint})
		if err != nil {
			t.Fatal(err)
		}
		s := newStore(aws.Config{
			Region:      defaultRegion,
			Credentials: credentials.NewStaticCredentialsProvider("key", "secret", ""),
			HTTPClient:  &http.Client{Transport: rec},
		}, cfg)
		if _, err := s.Put(t.Context(), "k", bytes.NewReader(body), int64(len(body)), nil, backend.Cond{IfNoneMatch: true}); err != nil {
			t.Fatalf("%s: Put: %v", endpoint, err)
		}
		if _, err := s.UploadPart(t.Context(), "k", "upload-1", 1, bytes.NewReader(body), 0, int64(len(body))); err != nil {
			t.Fatalf("%s: UploadPart: %v", endpoint, err)
		}
		for _, what := range []string{"PUT object", "PUT part"} {
			if got := rec.hashes[what]; got != want {
				t.Errorf("%s: %s sent x-amz-content-sha256 %q, want %q", endpoint, what, got, want)
			}
		}
	}
}
