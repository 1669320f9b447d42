package integration

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

type versionJSON struct {
	ID       string    `json:"id"`
	Modified time.Time `json:"modified"`
	Size     int64     `json:"size"`
	Current  bool      `json:"current"`
	Deleted  bool      `json:"deleted"`
}

func versionsOf(t *testing.T, path string) []versionJSON {
	t.Helper()
	out := nimbusOK(t, time.Minute, "versions", "--json", path)
	var vs []versionJSON
	if err := json.Unmarshal([]byte(out), &vs); err != nil {
		t.Fatalf("versions --json: %v\n%s", err, out)
	}
	return vs
}

// storedVersions counts the versions and delete markers of key, as the
// store lists them.
func (e *env) storedVersions(key string) int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := e.s3.ListObjectVersions(ctx, &awss3.ListObjectVersionsInput{Bucket: &e.bucket, Prefix: aws.String(key)})
	if err != nil {
		e.t.Fatal(err)
	}
	n := 0
	for _, v := range out.Versions {
		if aws.ToString(v.Key) == key {
			n++
		}
	}
	for _, d := range out.DeleteMarkers {
		if aws.ToString(d.Key) == key {
			n++
		}
	}
	return n
}

// readEventually reads path until it holds want (the kernel may keep the
// old attributes for up to a second).
func readEventually(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := os.ReadFile(path)
		if err == nil && string(got) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %q, %v; want %q", path, got, err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestVersionsRestore, on a versioned bucket: nimbus versions lists a
// file's versions newest first; restore --version makes one current again
// (the mount shows it at once), refuses with nothing changed when the file
// changed meanwhile, and works offline across a crash of the mount.
func TestVersionsRestore(t *testing.T) {
	e := newEnv(t)
	e.minio.EnableVersioning(t, e.bucket)
	cacheDir := t.TempDir()
	m := e.mount(mountOpt{cacheDir: cacheDir, args: []string{"--dir-ttl", "1h", "--poll", "0"}})
	f := m.path("notes.txt")
	contents := []string{"first\n", "second, longer\n", "third\n"}
	for _, c := range contents {
		if err := os.WriteFile(f, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
		m.sync(time.Minute)
	}
	vs := versionsOf(t, f)
	if len(vs) != 3 || !vs[0].Current || vs[1].Current || vs[2].Current {
		t.Fatalf("versions = %+v; want 3, the newest first and current", vs)
	}
	for i, v := range vs {
		if want := int64(len(contents[2-i])); v.Size != want || v.Deleted || v.ID == "" || v.Modified.IsZero() {
			t.Fatalf("version %d = %+v; want %d bytes, an id and a time", i, v, want)
		}
		if i > 0 && v.Modified.After(vs[i-1].Modified) {
			t.Fatalf("versions not newest first: %+v", vs)
		}
	}
	text := nimbusOK(t, time.Minute, "versions", f)
	if !strings.Contains(text, vs[2].ID) || !strings.Contains(text, "current") {
		t.Fatalf("versions text output:\n%s", text)
	}

	// Restore the first version: at once on the mount.
	out := nimbusOK(t, 2*time.Minute, "restore", "--version", vs[2].ID, f)
	if !strings.Contains(out, "restored") {
		t.Fatalf("restore printed %q", out)
	}
	readEventually(t, f, contents[0])
	e.objectEquals("notes.txt", contents[0])
	if n := e.storedVersions("notes.txt"); n != 4 {
		t.Fatalf("%d versions after the restore; want 4 (one more, none lost)", n)
	}

	// Changed elsewhere since the mount last looked (it will not look for
	// an hour): the restore is conditional on what it saw, so nothing
	// changes, and it says so.
	e.put("notes.txt", []byte("edited on another machine\n"))
	_, errOut, code := nimbusRun(t, 2*time.Minute, "restore", "--version", vs[1].ID, f)
	if code != 1 || !strings.Contains(errOut, "changed") || !strings.Contains(errOut, "nothing was changed") {
		t.Fatalf("restore over a remote change: exit %d, %q; want a refusal saying nothing changed", code, errOut)
	}
	if n := e.storedVersions("notes.txt"); n != 5 {
		t.Fatalf("%d versions after the refused restore; want 5 (the remote edit, nothing more)", n)
	}
	e.objectEquals("notes.txt", "edited on another machine\n")
	readEventually(t, f, "edited on another machine\n") // open revalidates

	// Offline, then a crash: the restore waits in the journal.
	vs = versionsOf(t, f)
	e.minio.Stop()
	for _, cmd := range []string{"versions", "deleted"} {
		_, errOut, code := nimbusRun(t, time.Minute, cmd, f)
		if code != 1 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "offline") || !strings.Contains(errOut, "try again once it is back") {
			t.Errorf("nimbus %s offline: exit %d, %q; want one line saying the store is offline and to try again", cmd, code, errOut)
		}
	}
	out = nimbusOK(t, 2*time.Minute, "restore", "--version", vs[len(vs)-1].ID, f)
	if !strings.Contains(out, "journaled") {
		t.Fatalf("offline restore printed %q; want it journaled", out)
	}
	if err := syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-m.exited
	if err := syscall.Unmount(m.dir, syscall.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	e.minio.Restart()
	m = e.mount(mountOpt{cacheDir: cacheDir})
	m.sync(time.Minute)
	e.objectEquals("notes.txt", contents[0])
	readEventually(t, m.path("notes.txt"), contents[0])
}

// objectEquals fails unless key holds want in the bucket.
func (e *env) objectEquals(key, want string) {
	e.t.Helper()
	got := e.objects()[key]
	if string(got) != want {
		e.t.Fatalf("%s in the bucket = %q; want %q", key, got, want)
	}
}

// TestVersionsOff: on an unversioned bucket, versions and restore
// --version say so in one line, with the command that turns it on.
func TestVersionsOff(t *testing.T) {
	e := newEnv(t)
	m := e.mount(mountOpt{})
	if err := os.WriteFile(m.path("a"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.sync(time.Minute)
	for _, args := range [][]string{{"versions", m.path("a")}, {"restore", "--version", "v1", m.path("a")}} {
		_, errOut, code := nimbusRun(t, time.Minute, args...)
		if code != 1 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "versioning is off") ||
			!strings.Contains(errOut, "put-bucket-versioning --bucket "+e.bucket) {
			t.Fatalf("nimbus %v: exit %d, %q; want one line with the command that turns versioning on", args, code, errOut)
		}
	}
}

type deletedJSON struct {
	Path    string    `json:"path"`
	Deleted time.Time `json:"deleted"`
	Size    int64     `json:"size"`
}

// TestUndelete, on a versioned bucket: nimbus deleted lists what was
// deleted, with when; restore PATH brings back a file, and a whole folder
// without overwriting a file that exists again.
func TestUndelete(t *testing.T) {
	e := newEnv(t)
	e.minio.EnableVersioning(t, e.bucket)
	m := e.mount(mountOpt{})
	files := map[string]string{"top.txt": "top\n", "d/a.txt": "a\n", "d/sub/b.txt": "b, deep\n"}
	if err := os.MkdirAll(m.path("d/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for p, c := range files {
		if err := os.WriteFile(m.path(p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m.sync(time.Minute)
	before := time.Now().Add(-2 * time.Second)
	if err := os.Remove(m.path("top.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(m.path("d")); err != nil {
		t.Fatal(err)
	}
	m.sync(time.Minute)

	out := nimbusOK(t, time.Minute, "deleted", "--json", m.dir)
	var ds []deletedJSON
	if err := json.Unmarshal([]byte(out), &ds); err != nil {
		t.Fatalf("deleted --json: %v\n%s", err, out)
	}
	var paths []string
	for _, d := range ds {
		paths = append(paths, d.Path)
		if d.Deleted.Before(before) || d.Deleted.After(time.Now().Add(2*time.Second)) {
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

	nimbusOK(t, 2*time.Minute, "restore", m.path("top.txt"))
	readEventually(t, m.path("top.txt"), files["top.txt"])

	// d/a.txt exists again (a new file): restoring d must keep it.
	e.put("d/a.txt", []byte("a new file\n"))
	out = nimbusOK(t, 2*time.Minute, "restore", m.path("d"))
	if !strings.Contains(out, "restored") {
		t.Fatalf("restore d printed %q", out)
	}
	readEventually(t, m.path("d/sub/b.txt"), files["d/sub/b.txt"])
	readEventually(t, m.path("d/a.txt"), "a new file\n")
	e.objectEquals("d/a.txt", "a new file\n")
	e.objectEquals("d/sub/b.txt", files["d/sub/b.txt"])

	// Nothing left to restore there; a path never deleted says so.
	if _, errOut, code := nimbusRun(t, time.Minute, "restore", m.path("never-was")); code != 1 || !strings.Contains(errOut, "nothing deleted") {
		t.Fatalf("restore of a path never deleted: exit %d, %q", code, errOut)
	}
	if _, errOut, code := nimbusRun(t, time.Minute, "restore", m.path("top.txt")); code != 1 || !strings.Contains(errOut, "--version") {
		t.Fatalf("restore of an existing file without --version: exit %d, %q", code, errOut)
	}
}
