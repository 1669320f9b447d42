package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nimbus-fs/nimbus/integration/s3proxy"
)

// rawObject reads key straight from the bucket; ok is false when absent.
func (e *env) rawObject(key string) (data []byte, ok bool) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := e.s3.GetObject(ctx, &awss3.GetObjectInput{Bucket: &e.bucket, Key: aws.String(key)})
	if err != nil {
		return nil, false
	}
	defer out.Body.Close()
	data, err = io.ReadAll(out.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return data, true
}

// trashCopies returns the keys of the trash copies of the file at p made on
// day, oldest first, in the layout .nimbus-trash/DAY/P~deleted-TIME.
func (e *env) trashCopies(day, p string) []string {
	e.t.Helper()
	name := regexp.MustCompile(`^` + regexp.QuoteMeta(".nimbus-trash/"+day+"/"+p) + `~deleted-[0-9]{6}\.[0-9]{9}Z$`)
	var out []string
	for _, k := range e.rawKeys(".nimbus-trash/" + day + "/") {
		if name.MatchString(k) {
			out = append(out, k)
		}
	}
	slices.Sort(out) // the time of day sorts as text
	return out
}

func deletedList(t *testing.T, dir string) []deletedJSON {
	t.Helper()
	out := nimbusOK(t, time.Minute, "deleted", "--json", dir)
	var ds []deletedJSON
	if err := json.Unmarshal([]byte(out), &ds); err != nil {
		t.Fatalf("deleted --json: %v\n%s", err, out)
	}
	return ds
}

// TestTrash, on an unversioned bucket: rm and rm -r through the mount move
// the files server-side to .nimbus-trash/DATE/PATH~deleted-TIME (CopyObject, no bytes
// downloaded or uploaded), which the mount hides; nimbus deleted lists
// them with the time of the delete; nimbus restore brings back a file and
// a folder byte for byte, never over a file that exists again; a rename
// puts nothing in the trash.
func TestTrash(t *testing.T) {
	e := newEnv(t)
	m, proxy := mountCounted(t, e)
	big := make([]byte, 4<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"top.txt": []byte("top\n"), "d/a.txt": []byte("a\n"), "d/sub/b.txt": []byte("b, deep\n"), "d/big.bin": big}
	if err := os.MkdirAll(m.path("d/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for p, c := range files {
		if err := os.WriteFile(m.path(p), c, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(m.path("keep.txt"), []byte("renamed, not deleted\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.sync(2 * time.Minute)

	before, start := proxy.Snapshot(), time.Now().Add(-2*time.Second)
	if err := os.Remove(m.path("top.txt")); err != nil {
		t.Fatal(err)
	}
	run(t, 2*time.Minute, "rm", "-r", m.path("d"))
	m.sync(2 * time.Minute)
	sent := proxy.Snapshot().Sub(before)
	day := time.Now().UTC().Format("2006-01-02")
	for p, c := range files {
		if _, ok := e.rawObject(p); ok {
			t.Errorf("%s is still in the bucket after rm", p)
		}
		keys := e.trashCopies(day, p)
		if len(keys) != 1 {
			t.Errorf("trash copies of %s: %v; want one, .nimbus-trash/%s/%s~deleted-HHMMSS.NNNNNNNNNZ", p, keys, day, p)
			continue
		}
		got, ok := e.rawObject(keys[0])
		if !ok || !bytes.Equal(got, c) {
			t.Errorf("%s: present %v, %d bytes; want the %d bytes deleted", keys[0], ok, len(got), len(c))
		}
	}
	if n := sent.Requests[s3proxy.OpCopy]; n < int64(len(files)) {
		t.Errorf("the deletes made %d CopyObject requests; want one per file (%d)", n, len(files))
	}
	// The folder indexes are read and written; the 4 MiB file is not.
	if sent.GetBytes > 1<<20 || sent.PutBytes > 1<<20 {
		t.Errorf("the deletes moved %d bytes down and %d up; want the trash copies made server-side", sent.GetBytes, sent.PutBytes)
	}
	if out := string(run(t, time.Minute, "ls", "-a", m.dir)); strings.Contains(out, ".nimbus-trash") {
		t.Errorf("ls -a shows the trash:\n%s", out)
	}

	ds := deletedList(t, m.dir)
	var paths []string
	for _, d := range ds {
		paths = append(paths, d.Path)
		if d.Deleted.Before(start) || d.Deleted.After(time.Now().Add(2*time.Second)) {
			t.Errorf("%s deleted at %v; want the time of the rm", d.Path, d.Deleted)
		}
		if c, ok := files[d.Path]; ok && d.Size != int64(len(c)) {
			t.Errorf("%s: size %d; want %d", d.Path, d.Size, len(c))
		}
	}
	for p := range files {
		if !slices.Contains(paths, p) {
			t.Errorf("deleted lists %v; %s is missing", paths, p)
		}
	}
	if sub := deletedList(t, m.path("d/sub")); len(sub) != 1 || sub[0].Path != "d/sub/b.txt" {
		t.Errorf("deleted d/sub = %+v; want d/sub/b.txt alone", sub)
	}

	// A rename is no delete: nothing of it goes to the trash.
	if err := os.Rename(m.path("keep.txt"), m.path("kept.txt")); err != nil {
		t.Fatal(err)
	}
	m.sync(time.Minute)
	if keys := e.rawKeys(".nimbus-trash/"); len(keys) != len(files) {
		t.Errorf("after a rename the trash holds %v; want the %d deleted files only", keys, len(files))
	}

	nimbusOK(t, 2*time.Minute, "restore", m.path("top.txt"))
	readEventually(t, m.path("top.txt"), string(files["top.txt"]))
	e.objectEquals("top.txt", string(files["top.txt"]))
	if keys := e.trashCopies(day, "top.txt"); len(keys) != 0 {
		t.Errorf("the trash copy of top.txt stays after its restore: %v", keys)
	}

	// d/a.txt exists again (a new file): restoring d keeps it, says so,
	// and brings back the rest.
	e.put("d/a.txt", []byte("a new file\n"))
	_, errOut, code := nimbusRun(t, 2*time.Minute, "restore", m.path("d"))
	if code != 1 || !strings.Contains(errOut, "d/a.txt") || !strings.Contains(errOut, "exists again") {
		t.Errorf("restore d over an existing d/a.txt: exit %d, %q; want it skipped and said", code, errOut)
	}
	readEventually(t, m.path("d/sub/b.txt"), string(files["d/sub/b.txt"]))
	readEventually(t, m.path("d/a.txt"), "a new file\n")
	if got, err := os.ReadFile(m.path("d/big.bin")); err != nil || !bytes.Equal(got, big) {
		t.Errorf("d/big.bin after restore: %d bytes, %v; want the 4 MiB deleted", len(got), err)
	}
	e.objectEquals("d/a.txt", "a new file\n")
	if _, errOut, code := nimbusRun(t, time.Minute, "restore", m.path("d/a.txt")); code != 1 || !strings.Contains(errOut, "exists again") ||
		strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
		t.Errorf("restore of a file that exists again: exit %d, %q; want a one-line refusal", code, errOut)
	}
	e.objectEquals("d/a.txt", "a new file\n")
	if _, errOut, code := nimbusRun(t, time.Minute, "restore", m.path("never-was")); code != 1 || !strings.Contains(errOut, "nothing deleted") {
		t.Errorf("restore of a path never deleted: exit %d, %q", code, errOut)
	}
}

// TestTrashOffAndSweep: with --trash 0 a delete keeps nothing; a mount with
// the trash on deletes date folders older than --trash (here one made by
// hand, dated 2000-01-01) and keeps today's.
func TestTrashOffAndSweep(t *testing.T) {
	e := newEnv(t)
	e.put("gone.txt", []byte("deleted for good\n"))
	off := e.mount(mountOpt{args: []string{"--trash", "0"}})
	if err := os.Remove(off.path("gone.txt")); err != nil {
		t.Fatal(err)
	}
	off.sync(time.Minute)
	if _, ok := e.rawObject("gone.txt"); ok {
		t.Fatal("gone.txt is still in the bucket")
	}
	if keys := e.rawKeys(".nimbus-trash/"); len(keys) != 0 {
		t.Errorf("with --trash 0 the trash holds %v", keys)
	}
	off.unmount()

	day := time.Now().UTC().Format("2006-01-02")
	e.put(".nimbus-trash/2000-01-01/old/a.txt", []byte("expired\n"))
	e.put(".nimbus-trash/"+day+"/today.txt", []byte("kept\n"))
	m := e.mount(mountOpt{args: []string{"--trash", "720h"}})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, ok := e.rawObject(".nimbus-trash/2000-01-01/old/a.txt"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the expired trash folder is still there 30s after the mount started")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, ok := e.rawObject(".nimbus-trash/" + day + "/today.txt"); !ok {
		t.Errorf("the sweep deleted today's trash")
	}
	if ds := deletedList(t, m.dir); len(ds) != 1 || ds[0].Path != "today.txt" {
		t.Errorf("deleted = %+v; want today.txt alone", ds)
	}
}

// TestTrashSameDay, on an unversioned bucket: a path deleted twice on one
// day keeps both copies; nimbus deleted lists both, newest first, with the
// time of each delete; nimbus restore brings back the newest, and then the
// other is still listed.
func TestTrashSameDay(t *testing.T) {
	e := newEnv(t)
	m := e.mount(mountOpt{})
	versions := []string{"first version\n", "second, longer version\n"}
	start := time.Now().Add(-2 * time.Second)
	var between time.Time
	for i, c := range versions {
		if err := os.WriteFile(m.path("a.txt"), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
		m.sync(time.Minute)
		if err := os.Remove(m.path("a.txt")); err != nil {
			t.Fatal(err)
		}
		m.sync(time.Minute)
		if i == 0 {
			between = time.Now()
		}
	}
	day := time.Now().UTC().Format("2006-01-02")
	keys := e.trashCopies(day, "a.txt")
	if len(keys) != 2 {
		t.Fatalf("trash copies of a.txt after two deletes today: %v; want two", keys)
	}
	for i, k := range keys {
		if got, _ := e.rawObject(k); string(got) != versions[i] {
			t.Errorf("%s = %q; want %q", k, got, versions[i])
		}
	}
	ds := deletedList(t, m.dir)
	if len(ds) != 2 || ds[0].Path != "a.txt" || ds[1].Path != "a.txt" {
		t.Fatalf("deleted = %+v; want a.txt twice", ds)
	}
	if ds[0].Size != int64(len(versions[1])) || ds[1].Size != int64(len(versions[0])) ||
		!ds[0].Deleted.After(between) || ds[1].Deleted.After(between) || ds[1].Deleted.Before(start) {
		t.Errorf("deleted = %+v; want the second delete (%d bytes, after %v), then the first (%d bytes, before)", ds, len(versions[1]), between, len(versions[0]))
	}
	out := nimbusOK(t, time.Minute, "deleted", m.dir)
	if strings.Count(out, "a.txt") != 2 {
		t.Errorf("nimbus deleted shows:\n%s\nwant a.txt on two lines", out)
	}

	nimbusOK(t, 2*time.Minute, "restore", m.path("a.txt"))
	readEventually(t, m.path("a.txt"), versions[1])
	e.objectEquals("a.txt", versions[1])
	if keys := e.trashCopies(day, "a.txt"); len(keys) != 1 {
		t.Errorf("trash copies after the restore: %v; want the first delete's only", keys)
	}
	if ds := deletedList(t, m.dir); len(ds) != 1 || ds[0].Size != int64(len(versions[0])) {
		t.Errorf("deleted after the restore = %+v; want the first delete", ds)
	}
}

// TestTrashBigFile, on an unversioned bucket, with the store's multipart
// copy threshold lowered to 6 MiB (NIMBUS_S3_COPY_THRESHOLD), as for files
// over 5 GiB: rm of a 13 MiB file copies it to the trash in parts
// (UploadPartCopy, no bytes over the network), restore brings it back byte
// for byte, and a rename moves it the same way.
func TestTrashBigFile(t *testing.T) {
	e := newEnv(t)
	proxy := e.startProxy(t)
	cacheDir := t.TempDir()
	m := startMount(t, append(e.minio.Env(), "NIMBUS_S3_COPY_THRESHOLD=6MiB"), cacheDir,
		[]string{"mount", "--endpoint", proxy.URL, "--cache-dir", cacheDir, "s3://" + e.bucket})
	big := make([]byte, 13<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m.path("big.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	m.sync(2 * time.Minute)

	before := proxy.Snapshot()
	if err := os.Remove(m.path("big.bin")); err != nil {
		t.Fatal(err)
	}
	m.sync(2 * time.Minute)
	sent := proxy.Snapshot().Sub(before)
	if _, ok := e.rawObject("big.bin"); ok {
		t.Fatal("big.bin is still in the bucket after rm")
	}
	day := time.Now().UTC().Format("2006-01-02")
	keys := e.trashCopies(day, "big.bin")
	if len(keys) != 1 {
		t.Fatalf("trash copies of big.bin: %v; want one", keys)
	}
	if got, _ := e.rawObject(keys[0]); !bytes.Equal(got, big) {
		t.Fatalf("%s holds %d bytes; want the 13 MiB deleted", keys[0], len(got))
	}
	if n := sent.Requests[s3proxy.OpCopyPart]; n != 3 || sent.Requests[s3proxy.OpCopy] != 0 {
		t.Errorf("the delete made %d UploadPartCopy and %d CopyObject; want 3 parts of at most 6 MiB, no CopyObject", n, sent.Requests[s3proxy.OpCopy])
	}
	if sent.GetBytes > 1<<20 || sent.PutBytes > 1<<20 {
		t.Errorf("the delete moved %d bytes down and %d up; want the trash copy made server-side", sent.GetBytes, sent.PutBytes)
	}
	if ds := deletedList(t, m.dir); len(ds) != 1 || ds[0].Path != "big.bin" || ds[0].Size != int64(len(big)) {
		t.Errorf("deleted = %+v; want big.bin, %d bytes", ds, len(big))
	}

	nimbusOK(t, 2*time.Minute, "restore", m.path("big.bin"))
	if got, _ := e.rawObject("big.bin"); !bytes.Equal(got, big) {
		t.Fatalf("big.bin after restore: %d bytes; want the 13 MiB deleted", len(got))
	}
	if got, err := os.ReadFile(m.path("big.bin")); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("big.bin on the mount after restore: %d bytes, %v", len(got), err)
	}
	if keys := e.trashCopies(day, "big.bin"); len(keys) != 0 {
		t.Errorf("the trash copy stays after the restore: %v", keys)
	}

	if err := os.Rename(m.path("big.bin"), m.path("moved.bin")); err != nil {
		t.Fatal(err)
	}
	m.sync(2 * time.Minute)
	if got, _ := e.rawObject("moved.bin"); !bytes.Equal(got, big) {
		t.Fatalf("moved.bin after the rename: %d bytes; want the 13 MiB", len(got))
	}
	if _, ok := e.rawObject("big.bin"); ok {
		t.Error("big.bin is still in the bucket after the rename")
	}
}
