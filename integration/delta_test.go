package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"os"
	"testing"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nimbus-fs/nimbus/integration/s3proxy"
)

const (
	// deltaFileSize is the size of the file TestDeltaUpload edits.
	deltaFileSize = 1 << 30
	// s3PartSize is the part size of the S3 store's multipart uploads
	// (backend/s3's default, which nimbus mount uses).
	s3PartSize = 16 << 20
)

// TestDeltaUpload edits one byte in the middle of a 1 GiB file that is
// already in the bucket: the upload sends at most two parts (the one
// holding the byte, or two if it straddled a boundary) and has MinIO copy
// the rest from the current version (UploadPartCopy), and the object ends
// up exactly the edited content. The bytes are counted twice: by nimbus
// (status --json) and, as the server sees them, by the counting proxy
// in front of MinIO (integration/s3proxy).
func TestDeltaUpload(t *testing.T) {
	e := newEnv(t)
	orig := pattern{seed: 55, size: deltaFileSize}
	e.putStream("big.bin", orig.reader(), orig.size)
	proxy := e.startProxy(t)
	m := e.mount(mountOpt{endpoint: proxy.URL})
	before := m.requests()
	atServer := proxy.Snapshot()

	// In the middle, and not on a part boundary.
	const at = deltaFileSize/2 + 12345
	flipped := []byte{orig.bytes(at, 1)[0] ^ 0xff}
	within(t, 5*time.Minute, "edit one byte of big.bin on the mount", func() error {
		f, err := os.OpenFile(m.path("big.bin"), os.O_RDWR, 0)
		if err != nil {
			return err
		}
		if _, err := f.WriteAt(flipped, at); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
	m.sync(10 * time.Minute)
	got := delta(before, m.requests())
	server := proxy.Snapshot().Sub(atServer)
	uploaded, copyParts := server.PutBytes, server.Requests[s3proxy.OpCopyPart]
	t.Logf("requests for the edit: %v; server saw %d body bytes uploaded and %d UploadPartCopy",
		got, uploaded, copyParts)

	// The content first: a cheap upload of the wrong bytes is no success.
	want := sha256.New()
	if _, err := io.Copy(want, io.MultiReader(
		io.NewSectionReader(orig, 0, at),
		bytes.NewReader(flipped),
		io.NewSectionReader(orig, at+1, orig.size-at-1),
	)); err != nil {
		t.Fatal(err)
	}
	if sum, size := e.objectSHA256("big.bin"); size != deltaFileSize || !bytes.Equal(sum, want.Sum(nil)) {
		t.Fatalf("big.bin in the bucket: %d bytes, sha256 %x; want %d bytes of the edited content (sha256 %x)",
			size, sum, int64(deltaFileSize), want.Sum(nil))
	}

	const limit = 2 * s3PartSize
	hint := "the whole file was sent again: is the vfs giving the journal an Op.Delta for files edited in place, and is it used?"
	if n := uploaded; n > limit {
		t.Errorf("the server received %d MiB of uploaded bodies for a 1-byte edit; want at most %d MiB (2 parts): %s", n>>20, limit>>20, hint)
	}
	if n := got["bytes_out"]; n > limit {
		t.Errorf("nimbus reports %d MiB uploaded (bytes_out) for a 1-byte edit; want at most %d MiB: %s", n>>20, limit>>20, hint)
	}
	if copyParts == 0 || got["UploadPartCopy"] == 0 {
		t.Errorf("no part was copied server-side (server saw %d UploadPartCopy, nimbus reports %d): %s",
			copyParts, got["UploadPartCopy"], hint)
	}
	if n := got["bytes_copied"]; n < deltaFileSize-limit {
		t.Errorf("nimbus reports %d MiB copied server-side; want the unchanged %d MiB at least", n>>20, (deltaFileSize-limit)>>20)
	}
}

// within runs fn, failing the test if it errs or takes longer than d (a
// hung mount must not hang the test run).
func within(t *testing.T, d time.Duration, what string, fn func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(d):
		t.Fatalf("%s: not done after %v", what, d)
	}
}

// objectSHA256 downloads key with the SDK and returns its sha256 and size.
func (e *env) objectSHA256(key string) ([]byte, int64) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := e.s3.GetObject(ctx, &awss3.GetObjectInput{Bucket: &e.bucket, Key: &key})
	if err != nil {
		e.t.Fatalf("get %q: %v", key, err)
	}
	defer out.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, out.Body)
	if err != nil {
		e.t.Fatalf("read %q: %v", key, err)
	}
	return h.Sum(nil), n
}
