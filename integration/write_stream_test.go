package integration

import (
	"bytes"
	"io"
	"os"
	"testing"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nimbus-fs/nimbus/integration/s3proxy"
)

// streamPartSize is the S3 part size of the mounts below
// (NIMBUS_S3_PART_SIZE): S3's minimum, so that a 21 MiB file has 5 parts.
const streamPartSize = 5 << 20

// waitParts waits until the proxy has seen at least n UploadPart requests
// since before, while the file is still open.
func waitParts(t *testing.T, proxy *s3proxy.Server, before s3proxy.Counts, n int64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for proxy.Snapshot().Sub(before).Requests[s3proxy.OpPart] < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d UploadPart requests before close; want %d (upload while writing)",
				proxy.Snapshot().Sub(before).Requests[s3proxy.OpPart], n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// writeSequentially writes data to f in 1 MiB writes.
func writeSequentially(t *testing.T, f *os.File, data []byte) {
	t.Helper()
	for off := 0; off < len(data); off += 1 << 20 {
		if _, err := f.Write(data[off:min(off+1<<20, len(data))]); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWriteStreamsParts writes a file of several parts through the mount:
// its complete parts reach the store before close (counted at the server,
// by a proxy in front of MinIO), the upload is completed rather than sent
// again (one body's worth of bytes, no PutObject), and the object is exact.
// A remote change made during a second such write gives a conflicted copy,
// and the remote version keeps the name.
func TestWriteStreamsParts(t *testing.T) {
	e := newEnv(t)
	e.put("shared.bin", []byte("the remote version before"))
	proxy := e.startProxy(t)
	m := e.mount(mountOpt{endpoint: proxy.URL, env: []string{"NIMBUS_S3_PART_SIZE=5MiB"}})

	t.Run("Exact", func(t *testing.T) {
		data := make([]byte, 4*streamPartSize+(1<<20))
		if _, err := io.ReadFull(pattern{seed: 71, size: int64(len(data))}.reader(), data); err != nil {
			t.Fatal(err)
		}
		before := proxy.Snapshot()
		f, err := os.Create(m.path("big.bin"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close() // on failure: an open file would keep the mount busy
		writeSequentially(t, f, data)
		waitParts(t, proxy, before, 4)
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		m.sync(2 * time.Minute)
		server := proxy.Snapshot().Sub(before)
		t.Logf("server saw %v, %d bytes uploaded", server.Requests, server.PutBytes)
		if got := e.objects()["big.bin"]; !bytes.Equal(got, data) {
			t.Fatalf("big.bin in the bucket: %d bytes, not the %d written", len(got), len(data))
		}
		if server.Requests[s3proxy.OpPart] != 5 || server.PutBytes > int64(len(data))+(1<<20) {
			t.Errorf("server saw %d UploadPart and %d bytes uploaded; want 5 parts and the file's %d bytes once (plus the attribute index)",
				server.Requests[s3proxy.OpPart], server.PutBytes, len(data))
		}
	})

	t.Run("Conflict", func(t *testing.T) {
		data := make([]byte, 3*streamPartSize+12345)
		if _, err := io.ReadFull(pattern{seed: 72, size: int64(len(data))}.reader(), data); err != nil {
			t.Fatal(err)
		}
		before := proxy.Snapshot()
		f, err := os.OpenFile(m.path("shared.bin"), os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		writeSequentially(t, f, data[:2*streamPartSize+1])
		waitParts(t, proxy, before, 2)
		remote := []byte("changed on another machine meanwhile")
		e.put("shared.bin", remote)
		writeSequentially(t, f, data[2*streamPartSize+1:])
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		m.sync(2 * time.Minute)
		objs := e.objects()
		if !bytes.Equal(objs["shared.bin"], remote) {
			t.Fatalf("shared.bin = %d bytes; want the remote change kept (%d bytes)", len(objs["shared.bin"]), len(remote))
		}
		copies := conflictCopies(objs, "shared.bin")
		if len(copies) != 1 || copies[0] != string(data) {
			t.Fatalf("%d conflicted copies of shared.bin; want one holding the %d bytes written", len(copies), len(data))
		}
		out, err := e.s3.ListMultipartUploads(t.Context(), &awss3.ListMultipartUploadsInput{Bucket: &e.bucket})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Uploads) != 0 {
			t.Errorf("%d multipart uploads left open; want the refused one aborted", len(out.Uploads))
		}
	})
}

// openUploads lists the multipart uploads open in the bucket.
func (e *env) openUploads(t *testing.T) []string {
	t.Helper()
	out, err := e.s3.ListMultipartUploads(t.Context(), &awss3.ListMultipartUploadsInput{Bucket: &e.bucket})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, u := range out.Uploads {
		keys = append(keys, *u.Key)
	}
	return keys
}

// TestWriteStreamsCrash kills nimbus (SIGKILL) while one file is being
// written, with parts of it sent, and just after another was closed, before
// its upload could complete. After the restart the closed file is in the
// bucket exactly, the unclosed one (never acknowledged) is not, and no
// multipart upload is left open: the journal aborts those no record names.
func TestWriteStreamsCrash(t *testing.T) {
	e := newEnv(t)
	cacheDir := t.TempDir()
	env := []string{"NIMBUS_S3_PART_SIZE=5MiB"}
	m := e.mount(mountOpt{cacheDir: cacheDir, env: env})

	closed := make([]byte, 2*streamPartSize+777)
	if _, err := io.ReadFull(pattern{seed: 81, size: int64(len(closed))}.reader(), closed); err != nil {
		t.Fatal(err)
	}
	open := make([]byte, 3*streamPartSize)
	if _, err := io.ReadFull(pattern{seed: 82, size: int64(len(open))}.reader(), open); err != nil {
		t.Fatal(err)
	}
	w, err := os.Create(m.path("unclosed.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	writeSequentially(t, w, open)
	deadline := time.Now().Add(time.Minute)
	for len(e.openUploads(t)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no multipart upload started while unclosed.bin was written")
		}
		time.Sleep(20 * time.Millisecond)
	}
	f, err := os.Create(m.path("closed.bin"))
	if err != nil {
		t.Fatal(err)
	}
	writeSequentially(t, f, closed)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	killNimbus(t, m) // within the 1 s upload delay of closed.bin
	w.Close()        // fails on the dead mount: nothing was acknowledged
	detachDead(t, m)
	if _, ok := e.objects()["closed.bin"]; ok {
		t.Log("closed.bin was uploaded before the kill; the restart has nothing to complete")
	}

	first := m
	m = e.mount(mountOpt{cacheDir: cacheDir, env: env, args: []string{"-v"}})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log before the kill:\n%s\nlog after the restart:\n%s", first.stderr, m.stderr)
		}
	})
	m.sync(2 * time.Minute)
	objs := e.objects()
	if !bytes.Equal(objs["closed.bin"], closed) {
		t.Fatalf("closed.bin after the restart: %d bytes, want the %d written", len(objs["closed.bin"]), len(closed))
	}
	if _, ok := objs["unclosed.bin"]; ok {
		t.Fatal("unclosed.bin, never closed before the kill, is in the bucket")
	}
	deadline = time.Now().Add(time.Minute)
	for left := e.openUploads(t); len(left) != 0; left = e.openUploads(t) {
		if time.Now().After(deadline) {
			t.Fatalf("multipart uploads left open after the restart: %v", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
