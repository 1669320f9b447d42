package s3proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nimbus-fs/nimbus/integration/minio"
)

func TestClassify(t *testing.T) {
	cases := []struct {
		method, target string
		copySource     bool
		want           Op
	}{
		{"GET", "/b?list-type=2&prefix=d%2F&delimiter=%2F", false, OpList},
		{"GET", "/b?prefix=x", false, OpList},
		{"GET", "/b/", false, OpList},
		{"GET", "/b", false, OpList},
		{"GET", "/", false, OpList},
		{"GET", "/b?uploads", false, OpList},
		{"GET", "/b?location", false, OpOther},
		{"GET", "/b/dir/key.bin", false, OpGet},
		{"GET", "/b/key?partNumber=2", false, OpGet},
		{"GET", "/b/key?uploadId=u", false, OpOther},
		{"GET", "/b/key?tagging", false, OpOther},
		{"HEAD", "/b/key", false, OpHead},
		{"HEAD", "/b", false, OpHead},
		{"PUT", "/b/key", false, OpPut},
		{"PUT", "/b/dir/", false, OpPut},
		{"PUT", "/b/key?partNumber=1&uploadId=u", false, OpPart},
		{"PUT", "/b/key?partNumber=1&uploadId=u", true, OpCopyPart},
		{"PUT", "/b/key", true, OpCopy},
		{"PUT", "/b/key?tagging", false, OpOther},
		{"PUT", "/b", false, OpOther},
		{"POST", "/b/key?uploads", false, OpMultipart},
		{"POST", "/b/key?uploadId=u", false, OpMultipart},
		{"POST", "/b?delete", false, OpDelete},
		{"DELETE", "/b/key", false, OpDelete},
		{"DELETE", "/b/key?uploadId=u", false, OpMultipart},
		{"DELETE", "/b", false, OpOther},
	}
	for _, c := range cases {
		r := httptest.NewRequest(c.method, c.target, nil)
		if c.copySource {
			r.Header.Set("X-Amz-Copy-Source", "/b/src")
		}
		if got := Classify(r); got != c.want {
			t.Errorf("%s %s (copy source %v) = %v, want %v", c.method, c.target, c.copySource, got, c.want)
		}
	}
}

// TestStreamsAndCounts proves that bodies go through as they come, in both
// directions (the first bytes arrive while the sender still holds the
// rest), that the Host header the client used reaches the server, and that
// object bytes are counted by direction while listing bytes are not.
func TestStreamsAndCounts(t *testing.T) {
	const first, total = 64 << 10, 3 << 20
	release := make(chan struct{})  // the server may send the rest of the GET
	gotFirst := make(chan struct{}) // the server has the first bytes of the PUT
	var (
		mu          sync.Mutex
		putReceived int64    // GUARDED_BY(mu)
		hosts       []string // GUARDED_BY(mu)
	)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hosts = append(hosts, r.Host)
		mu.Unlock()
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/b/big":
			w.Header().Set("Content-Length", "3145728")
			w.Write(make([]byte, first))
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-time.After(10 * time.Second):
				return // the test has failed already
			}
			w.Write(make([]byte, total-first))
		case r.Method == http.MethodGet:
			io.WriteString(w, `<ListBucketResult></ListBucketResult>`)
		case r.Method == http.MethodPut:
			buf := make([]byte, first)
			n, _ := io.ReadFull(r.Body, buf)
			close(gotFirst)
			rest, _ := io.Copy(io.Discard, r.Body)
			mu.Lock()
			putReceived = int64(n) + rest
			mu.Unlock()
		}
	}))
	defer upstream.Close()
	s, err := Start(upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	proxyHost := strings.TrimPrefix(s.URL, "http://")

	// GET: the first 64 KiB must arrive before the server sends the rest.
	resp, err := http.Get(s.URL + "/b/big")
	if err != nil {
		t.Fatal(err)
	}
	firstBytes := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(resp.Body, make([]byte, first))
		firstBytes <- err
	}()
	select {
	case err := <-firstBytes:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first bytes of a GET did not reach the client while the server held the rest: the proxy buffers responses")
	}
	close(release)
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	// PUT: the server must see the first 64 KiB before the client sends the rest.
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodPut, s.URL+"/b/key", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = total
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	if _, err := pw.Write(make([]byte, first)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gotFirst:
	case <-time.After(5 * time.Second):
		pw.CloseWithError(io.ErrUnexpectedEOF)
		t.Fatal("the server did not see the first bytes of a PUT before the client sent the rest: the proxy buffers requests")
	}
	if _, err := pw.Write(make([]byte, total-first)); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	resp, err = http.Get(s.URL + "/b?list-type=2")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	mu.Lock()
	defer mu.Unlock()
	if putReceived != total {
		t.Errorf("server received %d bytes of the PUT, want %d", putReceived, total)
	}
	for _, h := range hosts {
		if h != proxyHost {
			t.Errorf("server saw Host %q, want the client's %q", h, proxyHost)
		}
	}
	c := s.Snapshot()
	if c.Requests[OpGet] != 1 || c.Requests[OpPut] != 1 || c.Requests[OpList] != 1 {
		t.Errorf("requests = %v, want one GET, one PUT, one LIST", c.Requests)
	}
	if c.GetBytes != total {
		t.Errorf("GetBytes = %d, want %d (the GET's body, not the listing's)", c.GetBytes, total)
	}
	if c.PutBytes != total {
		t.Errorf("PutBytes = %d, want %d", c.PutBytes, total)
	}
}

// TestSignedRequestsThroughProxy runs real SigV4-signed SDK calls through
// the proxy to MinIO: they only succeed if the Host header and the signed
// headers reach the server as the client sent them.
func TestSignedRequestsThroughProxy(t *testing.T) {
	srv := minio.Start(t)
	s, err := Start(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	client := awss3.New(srv.Client().Options(), func(o *awss3.Options) { o.BaseEndpoint = aws.String(s.URL) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	bucket := "proxy"
	if _, err := client.CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: &bucket}); err != nil {
		t.Fatal(err)
	}
	before := s.Snapshot()

	// 3 MiB: big enough for the SDK to send Expect: 100-continue.
	data := bytes.Repeat([]byte("0123456789abcdef"), 3<<16)
	if _, err := client.PutObject(ctx, &awss3.PutObjectInput{Bucket: &bucket, Key: aws.String("a"), Body: bytes.NewReader(data)}); err != nil {
		t.Fatal(err)
	}
	out, err := client.GetObject(ctx, &awss3.GetObjectInput{Bucket: &bucket, Key: aws.String("a"), Range: aws.String("bytes=0-999")})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(out.Body)
	out.Body.Close()
	if err != nil || !bytes.Equal(got, data[:1000]) {
		t.Fatalf("ranged GET through the proxy: %v, %d bytes", err, len(got))
	}
	if _, err := client.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: &bucket, Key: aws.String("a")}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.ListObjectsV2(ctx, &awss3.ListObjectsV2Input{Bucket: &bucket}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CopyObject(ctx, &awss3.CopyObjectInput{Bucket: &bucket, Key: aws.String("b"), CopySource: aws.String(bucket + "/a")}); err != nil {
		t.Fatal(err)
	}
	// 12 MiB in 5 MiB parts: create, 3 parts, complete.
	up := manager.NewUploader(client, func(u *manager.Uploader) { u.PartSize = 5 << 20 })
	big := bytes.Repeat(data, 4)
	if _, err := up.Upload(ctx, &awss3.PutObjectInput{Bucket: &bucket, Key: aws.String("c"), Body: bytes.NewReader(big)}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: &bucket, Key: aws.String("b")}); err != nil {
		t.Fatal(err)
	}

	d := s.Snapshot().Sub(before)
	want := map[Op]int64{OpPut: 1, OpGet: 1, OpHead: 1, OpList: 1, OpCopy: 1, OpMultipart: 2, OpPart: 3, OpDelete: 1}
	for _, op := range Ops() {
		if d.Requests[op] != want[op] {
			t.Errorf("%v requests = %d, want %d", op, d.Requests[op], want[op])
		}
	}
	if d.GetBytes != 1000 {
		t.Errorf("GetBytes = %d, want 1000", d.GetBytes)
	}
	if wantPut := int64(len(data) + len(big)); d.PutBytes != wantPut {
		t.Errorf("PutBytes = %d, want %d", d.PutBytes, wantPut)
	}
	if d.Errors != 0 {
		t.Errorf("%d proxy errors", d.Errors)
	}
}
