package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nimbus-fs/nimbus/integration/s3proxy"
)

// partialFileSize is the size of the files the partial-edit tests edit:
// well above --partial-edit-min (32 MiB) and several parts.
const partialFileSize = 256 << 20

// editedSHA256 is the sha256 of orig with the bytes at off replaced by b.
func editedSHA256(t *testing.T, orig pattern, off int64, b []byte) []byte {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, io.MultiReader(
		io.NewSectionReader(orig, 0, off),
		bytes.NewReader(b),
		io.NewSectionReader(orig, off+int64(len(b)), orig.size-off-int64(len(b))),
	)); err != nil {
		t.Fatal(err)
	}
	return h.Sum(nil)
}

// snapshotKeys lists the keys of nimbus's hidden snapshots in the bucket.
func (e *env) snapshotKeys() []string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := e.s3.ListObjectsV2(ctx, &awss3.ListObjectsV2Input{Bucket: &e.bucket, Prefix: aws.String(".nimbus-snapshots/")})
	if err != nil {
		e.t.Fatal(err)
	}
	var keys []string
	for _, o := range out.Contents {
		keys = append(keys, *o.Key)
	}
	return keys
}

// TestPartialEdit edits bytes of a large file that is not cached, and
// checks that only what is needed was downloaded: nothing before the
// write returned, and around the change only the part the upload sends.
// The file reads back right through the mount (the bytes it lacks come
// from the store), the bucket gets exactly the edited content, and the
// hidden snapshot the edit used is gone after the unmount.
func TestPartialEdit(t *testing.T) {
	e := newEnv(t)
	orig := pattern{seed: 77, size: partialFileSize}
	e.putStream("big.bin", orig.reader(), orig.size)
	proxy := e.startProxy(t)
	m := e.mount(mountOpt{endpoint: proxy.URL})
	atStart := proxy.Snapshot()

	const at = partialFileSize/2 + 777
	edit := []byte("partial edit")
	var afterWrite s3proxy.Counts
	within(t, 2*time.Minute, "edit big.bin and read it back", func() error {
		f, err := os.OpenFile(m.path("big.bin"), os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.WriteAt(edit, at); err != nil {
			return err
		}
		afterWrite = proxy.Snapshot()
		// Around the edit, through the handle that made it.
		got := make([]byte, 1<<20)
		if _, err := f.ReadAt(got, at-1000); err != nil {
			return err
		}
		want := append(append(orig.bytes(at-1000, 1000), edit...), orig.bytes(at+int64(len(edit)), int64(len(got))-1000-int64(len(edit)))...)
		if !bytes.Equal(got, want) {
			t.Errorf("reading around the edit through the open file: wrong bytes")
		}
		return f.Close()
	})
	if n := afterWrite.Sub(atStart).GetBytes; n > 0 {
		t.Errorf("the first write downloaded %d bytes; want none (the edit starts from a snapshot)", n)
	}
	if n := afterWrite.Sub(atStart).Requests[s3proxy.OpCopy]; n != 1 {
		t.Errorf("the first write made %d CopyObject requests; want 1 (the snapshot)", n)
	}
	m.sync(5 * time.Minute)
	server := proxy.Snapshot().Sub(atStart)
	t.Logf("server saw %d MiB downloaded, %d MiB uploaded, %d UploadPartCopy", server.GetBytes>>20, server.PutBytes>>20, server.Requests[s3proxy.OpCopyPart])

	if sum, size := e.objectSHA256("big.bin"); size != orig.size || !bytes.Equal(sum, editedSHA256(t, orig, at, edit)) {
		t.Fatalf("big.bin in the bucket: %d bytes, sha256 %x; want the edited content", size, sum)
	}
	// The read back above fetched 1 MiB blocks; the upload the part that
	// holds the edit. All together a few parts, not the file.
	if limit := int64(3 * s3PartSize); server.GetBytes > limit {
		t.Errorf("downloaded %d MiB for a %d-byte edit of a %d MiB file; want at most %d MiB",
			server.GetBytes>>20, len(edit), partialFileSize>>20, limit>>20)
	}
	if limit := int64(2 * s3PartSize); server.PutBytes > limit {
		t.Errorf("uploaded %d MiB; want at most %d MiB", server.PutBytes>>20, limit>>20)
	}
	if keys := e.snapshotKeys(); len(keys) == 0 {
		t.Errorf("no snapshot in the bucket before the unmount: was the edit not partial?")
	}
	m.unmount()
	if keys := e.snapshotKeys(); len(keys) != 0 {
		t.Errorf("snapshots left after the unmount: %q", keys)
	}
}

// TestPartialEditConflict: the file is replaced remotely after a partial
// edit began and before its upload. The remote version keeps the name,
// and the conflicted copy holds the whole local version, rebuilt from the
// snapshot since the version it was edited from is gone.
func TestPartialEditConflict(t *testing.T) {
	e := newEnv(t)
	orig := pattern{seed: 78, size: partialFileSize}
	e.putStream("big.bin", orig.reader(), orig.size)
	m := e.mount(mountOpt{})

	const at = 12345
	edit := []byte("local edit")
	remote := []byte("replaced on another machine")
	within(t, 2*time.Minute, "edit big.bin while it is replaced remotely", func() error {
		f, err := os.OpenFile(m.path("big.bin"), os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.WriteAt(edit, at); err != nil {
			return err
		}
		e.put("big.bin", remote)
		return f.Close()
	})
	m.sync(5 * time.Minute)

	objs := e.s3Keys()
	var copyKey string
	for _, k := range objs {
		if strings.HasPrefix(k, "big (conflicted copy ") && strings.HasSuffix(k, ").bin") {
			copyKey = k
		}
	}
	if copyKey == "" {
		t.Fatalf("no conflicted copy of big.bin in %q", objs)
	}
	if sum, size := e.objectSHA256(copyKey); size != orig.size || !bytes.Equal(sum, editedSHA256(t, orig, at, edit)) {
		t.Errorf("%s: %d bytes, sha256 %x; want the whole local version (%d bytes)", copyKey, size, sum, orig.size)
	}
	if sum, size := e.objectSHA256("big.bin"); size != int64(len(remote)) || !bytes.Equal(sum, sha256Of(remote)) {
		t.Errorf("big.bin: %d bytes; want the remote version (%d bytes)", size, len(remote))
	}
}

func sha256Of(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

// s3Keys lists every key of the bucket.
func (e *env) s3Keys() []string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var keys []string
	p := awss3.NewListObjectsV2Paginator(e.s3, &awss3.ListObjectsV2Input{Bucket: &e.bucket})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, o := range page.Contents {
			keys = append(keys, *o.Key)
		}
	}
	return keys
}

// TestPartialEditMultipartSnapshot: a file too big for one CopyObject (the
// mount's copy threshold lowered to 6 MiB, as 5 GiB is for S3) is still
// edited without a download: its snapshot is a multipart copy.
func TestPartialEditMultipartSnapshot(t *testing.T) {
	e := newEnv(t)
	const size = 40 << 20 // above --partial-edit-min (32 MiB)
	orig := pattern{seed: 79, size: size}
	e.putStream("big.bin", orig.reader(), orig.size)
	proxy := e.startProxy(t)
	m := e.mount(mountOpt{endpoint: proxy.URL, env: []string{"NIMBUS_S3_COPY_THRESHOLD=6MiB"}})
	atStart := proxy.Snapshot()
	const at = size/2 + 777
	edit := []byte("edit of a big file")
	within(t, 2*time.Minute, "edit big.bin", func() error {
		f, err := os.OpenFile(m.path("big.bin"), os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.WriteAt(edit, at); err != nil {
			return err
		}
		return f.Close()
	})
	made := proxy.Snapshot().Sub(atStart)
	if made.GetBytes > 0 || made.Requests[s3proxy.OpCopy] != 0 || made.Requests[s3proxy.OpCopyPart] < 2 {
		t.Errorf("the edit downloaded %d bytes and made %d CopyObject, %d UploadPartCopy; want no download and a snapshot in parts",
			made.GetBytes, made.Requests[s3proxy.OpCopy], made.Requests[s3proxy.OpCopyPart])
	}
	m.sync(5 * time.Minute)
	if sum, got := e.objectSHA256("big.bin"); got != size || !bytes.Equal(sum, editedSHA256(t, orig, at, edit)) {
		t.Fatalf("big.bin in the bucket: %d bytes, sha256 %x; want the edited content", got, sum)
	}
}
