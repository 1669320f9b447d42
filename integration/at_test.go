package integration

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// treeOf returns every file under root with its content, and every folder
// (with a trailing "/"), by path relative to root.
func treeOf(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			out[rel+"/"] = ""
			return nil
		}
		b, err := os.ReadFile(p)
		out[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return out
}

// TestAtPointInTime, on a versioned bucket: a mount with --at TIME shows
// the tree and the bytes of TIME (files deleted since are there, files
// written since are not, overwritten files hold their old content), and
// refuses writes with EROFS; --at takes a duration ago too.
func TestAtPointInTime(t *testing.T) {
	e := newEnv(t)
	e.minio.EnableVersioning(t, e.bucket)
	live := e.mount(mountOpt{})
	then := map[string]string{
		"a.txt": "a, version 1\n", "gone.txt": "deleted later\n",
		"d/b.txt": "b, version 1\n", "d/sub/c.txt": "c, deep\n",
	}
	if err := os.MkdirAll(live.path("d/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(live.path("empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	for p, c := range then {
		if err := os.WriteFile(live.path(p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	live.sync(time.Minute)
	// Store times have a second's resolution here: keep TIME clear of both
	// sides.
	time.Sleep(1100 * time.Millisecond)
	at := time.Now().UTC().Format(time.RFC3339)
	time.Sleep(1100 * time.Millisecond)

	if err := os.WriteFile(live.path("a.txt"), []byte("a, version 2, much longer\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(live.path("gone.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(live.path("d/b.txt"), []byte("b, version 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(live.path("d/sub")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(live.path("later/deep"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(live.path("later/deep/new.txt"), []byte("new\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(live.path("new.txt"), []byte("new\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	live.sync(time.Minute)

	past := e.mount(mountOpt{args: []string{"--at", at}})
	want := map[string]string{"d/": "", "d/sub/": "", "empty/": ""}
	for p, c := range then {
		want[p] = c
	}
	got := treeOf(t, past.dir)
	for p, c := range want {
		if g, ok := got[p]; !ok || g != c {
			t.Errorf("--at %s: %s = %q (present %v); want %q", at, p, g, ok, c)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("--at %s shows %s, which did not exist then", at, p)
		}
	}
	// The live mount still shows today.
	if b, err := os.ReadFile(live.path("a.txt")); err != nil || !bytes.HasPrefix(b, []byte("a, version 2")) {
		t.Errorf("live a.txt = %q, %v", b, err)
	}

	for what, do := range map[string]func() error{
		"create":   func() error { return os.WriteFile(past.path("x.txt"), []byte("x"), 0o644) },
		"write":    func() error { return os.WriteFile(past.path("a.txt"), []byte("x"), 0o644) },
		"unlink":   func() error { return os.Remove(past.path("gone.txt")) },
		"mkdir":    func() error { return os.Mkdir(past.path("newdir"), 0o755) },
		"rename":   func() error { return os.Rename(past.path("a.txt"), past.path("z.txt")) },
		"truncate": func() error { return os.Truncate(past.path("a.txt"), 0) },
	} {
		if err := do(); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s on the --at mount: %v; want EROFS", what, err)
		}
	}
	e.objectEquals("a.txt", "a, version 2, much longer\n")

	// A duration ago: the bucket is younger than an hour, so nothing.
	hourAgo := e.mount(mountOpt{args: []string{"--at", "1h"}})
	if ents, err := os.ReadDir(hourAgo.dir); err != nil || len(ents) != 0 {
		t.Errorf("--at 1h shows %v, %v; want the empty bucket of an hour ago", ents, err)
	}
}

// TestAtVersions: in an --at mount, nimbus versions lists the history as
// it stood at TIME (later versions left out, "current" the one the view
// shows), a file written later has none there, nimbus deleted lists what
// had been deleted by TIME, and nimbus restore refuses
// in one line naming the command to run on a writable mount, with the
// version shown, and changes nothing.
func TestAtVersions(t *testing.T) {
	e := newEnv(t)
	e.minio.EnableVersioning(t, e.bucket)
	live := e.mount(mountOpt{})
	v1, v2 := "a, version 1\n", "a, version 2, longer\n"
	for _, name := range []string{"a.txt", "gone-then.txt", "gone-later.txt"} {
		if err := os.WriteFile(live.path(name), []byte(v1), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	live.sync(time.Minute)
	if err := os.Remove(live.path("gone-then.txt")); err != nil {
		t.Fatal(err)
	}
	live.sync(time.Minute)
	// Store times have a second's resolution here: keep TIME clear of both
	// sides.
	time.Sleep(1100 * time.Millisecond)
	at := time.Now().UTC().Format(time.RFC3339)
	time.Sleep(1100 * time.Millisecond)
	if err := os.WriteFile(live.path("a.txt"), []byte(v2), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(live.path("gone-later.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(live.path("new.txt"), []byte("later\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	live.sync(time.Minute)

	now := versionsOf(t, live.path("a.txt"))
	if len(now) != 2 || !now[0].Current || now[0].Size != int64(len(v2)) || now[1].Current {
		t.Fatalf("versions in the live mount = %+v; want version 2 current, then version 1", now)
	}
	past := e.mount(mountOpt{args: []string{"--at", at}})
	then := versionsOf(t, past.path("a.txt"))
	if len(then) != 1 || then[0].ID != now[1].ID || !then[0].Current || then[0].Size != int64(len(v1)) {
		t.Errorf("versions in the --at %s mount = %+v; want version 1 (%s) alone, current then", at, then, now[1].ID)
	}
	if out := nimbusOK(t, time.Minute, "versions", past.path("a.txt")); !strings.Contains(out, now[1].ID) || strings.Contains(out, now[0].ID) {
		t.Errorf("nimbus versions in the --at mount:\n%s\nwant version 1 only", out)
	}
	_, errOut, code := nimbusRun(t, time.Minute, "versions", past.path("new.txt"))
	if code != 1 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "no version written by") {
		t.Errorf("versions of a file written after TIME, in the --at mount: exit %d, %q; want one line saying there was none then", code, errOut)
	}

	// Without --version, the command names the version the view shows;
	// with one, that one.
	// nimbus deleted in the view: what had been deleted by TIME.
	if ds := deletedList(t, past.dir); len(ds) != 1 || ds[0].Path != "gone-then.txt" {
		t.Errorf("deleted in the --at mount = %+v; want gone-then.txt alone (gone-later.txt still existed then)", ds)
	}

	for version, args := range map[string][]string{
		now[1].ID: {"restore", past.path("a.txt")},
		now[0].ID: {"restore", past.path("a.txt"), "--version", now[0].ID},
	} {
		_, errOut, code := nimbusRun(t, time.Minute, args...)
		want := "nimbus restore MNT/a.txt --version " + version
		if code != 1 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "read-only") ||
			!strings.Contains(errOut, want) || !strings.Contains(errOut, "nimbus mount --endpoint "+e.minio.Endpoint+" s3://"+e.bucket) {
			t.Errorf("nimbus %v: exit %d, %q; want one line saying the view is read-only and to run %q on a writable mount of s3://%s", args, code, errOut, want, e.bucket)
		}
	}
	_, errOut, code = nimbusRun(t, time.Minute, "restore", past.path("new.txt"))
	if code != 1 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "read-only") || !strings.Contains(errOut, "nimbus restore MNT/new.txt") {
		t.Errorf("restore of a file the view does not show: exit %d, %q; want the read-only refusal naming the command", code, errOut)
	}
	e.objectEquals("a.txt", v2)
	if n := e.storedVersions("a.txt"); n != 2 {
		t.Errorf("a.txt has %d versions after the refused restores; want 2", n)
	}
}

// TestAtUnversioned: --at on a bucket without versions fails at once, in
// one line that says why.
func TestAtUnversioned(t *testing.T) {
	e := newEnv(t)
	mp := t.TempDir()
	_, errOut, code := nimbusRunEnv(t, e.minio.Env(), time.Minute, "mount", "--endpoint", e.minio.Endpoint, "--cache-dir", t.TempDir(), "--at", "1h", "s3://"+e.bucket, mp)
	if code == 0 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "versioning is off") {
		t.Errorf("mount --at on an unversioned bucket: exit %d, %q; want one line saying versioning is off", code, errOut)
	}
	if isMounted(mp) {
		t.Errorf("%s is mounted", mp)
	}
}

// nimbusRunEnv is nimbusRun with extra environment (credentials).
func nimbusRunEnv(t testing.TB, env []string, timeout time.Duration, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = nimbusCommand(t, timeout, env, &out, &errOut, args...)
	if code == -1 {
		t.Fatalf("nimbus %v: not done after %v", args, timeout)
	}
	return out.String(), errOut.String(), code
}
