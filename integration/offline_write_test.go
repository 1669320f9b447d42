package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestOfflineWrites checks promise 6 for changes: with the store down, the
// mount journals creates, edits of cached files, renames, deletes and
// mkdirs, and shows them at once; an edit of content that is not cached
// fails with EIO quickly instead of hanging. When the store is back, the
// journal drains by itself, without any command, to exactly the local view.
func TestOfflineWrites(t *testing.T) {
	e := newEnv(t)
	editMe := pattern{seed: 61, size: 300<<10 + 3}
	uncached := pattern{seed: 62, size: 1<<20 + 9}
	e.put("docs/a.txt", []byte("alpha"))
	e.putStream("docs/edit-me.bin", editMe.reader(), editMe.size)
	e.putStream("docs/uncached.bin", uncached.reader(), uncached.size)
	e.put("old/rename-me.txt", []byte("rename me"))
	e.put("old/keep.txt", []byte("keep"))
	e.put("delete-me.txt", []byte("delete me"))
	e.put("top.txt", []byte("top"))
	overwriteMe := pattern{seed: 64, size: 1 << 20}
	e.putStream("docs/overwrite-me.bin", overwriteMe.reader(), overwriteMe.size)

	m := e.mount(mountOpt{})
	run(t, time.Minute, "ls", "-lR", m.dir) // the tree is known
	// Cache the content that will be read or edited offline. Three files
	// are never read: uncached.bin, rename-me.txt and overwrite-me.bin.
	if got := fileSHA(t, m.path("docs/edit-me.bin")); got != editMe.sha256() {
		t.Fatal("online read of docs/edit-me.bin differs")
	}
	run(t, time.Minute, "cat", m.path("docs/a.txt"), m.path("old/keep.txt"), m.path("top.txt"))

	e.minio.Stop()

	// An edit in the middle of content that is not cached cannot be
	// journaled: it fails, quickly.
	start := time.Now()
	var uncachedErr error
	offlineWithin(t, 30*time.Second, "edit of the uncached docs/uncached.bin", func() error {
		uncachedErr = offlineEditAt(m.path("docs/uncached.bin"), 4096, []byte("NOT CACHED"))
		return nil
	})
	took := time.Since(start)
	if !errors.Is(uncachedErr, syscall.EIO) {
		t.Errorf("offline edit of an uncached file: %v, want EIO", uncachedErr)
	}
	if took > 10*time.Second {
		t.Errorf("offline edit of an uncached file took %v to fail, want seconds", took)
	}
	t.Logf("offline edit of uncached content failed in %v: %v", took.Round(time.Millisecond), uncachedErr)

	// Everything else works offline and shows at once.
	inner := pattern{seed: 63, size: 700<<10 + 1}
	patched := editMe.bytes(0, editMe.size)
	copy(patched[1000:], "EDITED OFFLINE")
	patched = append(patched, " and appended"...)
	steps := []struct {
		name string
		do   func() error
	}{
		{"create new.txt", func() error { return os.WriteFile(m.path("new.txt"), []byte("made offline"), 0o644) }},
		{"mkdir newdir", func() error { return os.Mkdir(m.path("newdir"), 0o755) }},
		{"create newdir/inner.bin", func() error { return os.WriteFile(m.path("newdir/inner.bin"), inner.bytes(0, inner.size), 0o644) }},
		{"mkdir empty", func() error { return os.Mkdir(m.path("empty"), 0o755) }},
		{"edit the cached docs/edit-me.bin", func() error {
			if err := offlineEditAt(m.path("docs/edit-me.bin"), 1000, []byte("EDITED OFFLINE")); err != nil {
				return err
			}
			f, err := os.OpenFile(m.path("docs/edit-me.bin"), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			if _, err := f.Write([]byte(" and appended")); err != nil {
				f.Close()
				return err
			}
			return f.Close()
		}},
		{"rename the uncached old/rename-me.txt to docs/renamed.txt", func() error {
			return os.Rename(m.path("old/rename-me.txt"), m.path("docs/renamed.txt"))
		}},
		{"rename top.txt to newdir/top.txt", func() error { return os.Rename(m.path("top.txt"), m.path("newdir/top.txt")) }},
		{"delete delete-me.txt", func() error { return os.Remove(m.path("delete-me.txt")) }},
		// O_TRUNC replaces the content without reading it: nothing
		// needs to be cached for that.
		{"overwrite (O_TRUNC) the uncached docs/overwrite-me.bin", func() error {
			return os.WriteFile(m.path("docs/overwrite-me.bin"), []byte("overwritten offline"), 0o644)
		}},
	}
	for _, s := range steps {
		offlineWithin(t, 30*time.Second, "offline "+s.name, s.do)
	}

	want := map[string][]byte{
		"docs/":                 nil,
		"docs/a.txt":            []byte("alpha"),
		"docs/edit-me.bin":      patched,
		"docs/uncached.bin":     uncached.bytes(0, uncached.size),
		"docs/renamed.txt":      []byte("rename me"),
		"docs/overwrite-me.bin": []byte("overwritten offline"),
		"old/":                  nil,
		"old/keep.txt":          []byte("keep"),
		"new.txt":               []byte("made offline"),
		"newdir/":               nil,
		"newdir/inner.bin":      inner.bytes(0, inner.size),
		"newdir/top.txt":        []byte("top"),
		"empty/":                nil,
	}
	// The offline view: every name and size, and the bytes of all that is
	// local (everything but the two files never read).
	offlineWithin(t, time.Minute, "offline check of the view", func() error {
		offlineCheckView(t, m, want, map[string]bool{"docs/uncached.bin": true, "docs/renamed.txt": true})
		return nil
	})

	st := offlineStatusOf(t, m)
	deadline := time.Now().Add(30 * time.Second)
	for st.Online && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		st = offlineStatusOf(t, m)
	}
	if st.Online {
		t.Errorf("nimbus status says online 30s after MinIO stopped")
	}
	if st.Uploads.Pending == 0 {
		t.Errorf("nimbus status shows no pending uploads offline after 8 changes: %+v", st.Uploads)
	}
	t.Logf("offline status: online=%v pending=%d (%d bytes)", st.Online, st.Uploads.Pending, st.Uploads.PendingBytes)

	// Back online: the journal drains with no command run.
	e.minio.Restart()
	var objs map[string][]byte
	var diffs []string
	deadline = time.Now().Add(60 * time.Second)
	for {
		objs = e.objects()
		diffs = offlineTreeDiffs(want, objs)
		if len(diffs) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	for _, d := range diffs {
		t.Errorf("60s after MinIO came back, with no command run: %s", d)
	}
	for k := range objs {
		if strings.Contains(k, "(conflicted copy") {
			t.Errorf("conflicted copy after offline changes by one mount alone: %s", k)
		}
	}
	m.sync(time.Minute)
	sameTree(t, want, e.objects())
	for _, d := range offlineTreeDiffs(want, localTree(t, m.dir)) {
		t.Errorf("the mount back online: %s", d)
	}
	st = offlineStatusOf(t, m)
	if !st.Online || st.Uploads.Pending != 0 || len(st.Conflicts) != 0 {
		t.Errorf("status after the drain: online=%v pending=%d conflicts=%s; want online, 0, none",
			st.Online, st.Uploads.Pending, st.Conflicts)
	}
}

// TestUnmountWithPendingUploads checks promises 4 and 6 across a clean
// unmount: with the store down, nimbus unmount does not hang on pending
// uploads and loses none of them; a later mount on the same cache folder
// shows them at once and uploads them.
func TestUnmountWithPendingUploads(t *testing.T) {
	// nimbus unmount, and Ctrl-C or a service manager's stop.
	for _, how := range []string{"unmount", "SIGINT", "SIGTERM"} {
		t.Run(how, func(t *testing.T) { testUnmountWithPendingUploads(t, how) })
	}
}

func testUnmountWithPendingUploads(t *testing.T, how string) {
	e := newEnv(t)
	e.put("existing.txt", []byte("existing"))
	cacheDir := t.TempDir()
	m := e.mount(mountOpt{cacheDir: cacheDir})
	run(t, time.Minute, "ls", "-lR", m.dir)
	run(t, time.Minute, "cat", m.path("existing.txt")) // cached, so that it can be rewritten offline

	e.minio.Stop()
	two := pattern{seed: 71, size: 2<<20 + 3}
	want := map[string][]byte{
		"existing.txt":     []byte("changed offline"),
		"three.txt":        {},
		"pending/":         nil,
		"pending/one.txt":  []byte("one"),
		"pending/two.bin":  two.bytes(0, two.size),
		"pending/empty/":   nil,
		"pending/deep/":    nil,
		"pending/deep/x.y": []byte("deep"),
	}
	offlineWithin(t, time.Minute, "offline writes", func() error {
		var errs []error
		for _, dir := range []string{"pending", "pending/empty", "pending/deep"} {
			errs = append(errs, os.Mkdir(m.path(dir), 0o755))
		}
		for _, k := range []string{"existing.txt", "three.txt", "pending/one.txt", "pending/two.bin", "pending/deep/x.y"} {
			errs = append(errs, os.WriteFile(m.path(k), want[k], 0o644))
		}
		return errors.Join(errs...)
	})
	if st := offlineStatusOf(t, m); st.Uploads.Pending == 0 {
		t.Errorf("no pending uploads after offline writes: %+v", st.Uploads)
	}

	offlineUnmount(t, m, how, time.Minute)

	e.minio.Restart()
	// The store is up but nothing is mounted: nothing was uploaded
	// behind our back, so what follows comes from the journal.
	if objs := e.objects(); objs["pending/one.txt"] != nil || string(objs["existing.txt"]) != "existing" {
		t.Fatalf("the bucket changed while nothing was mounted: %v", offlineKeys(objs))
	}
	m = e.mount(mountOpt{cacheDir: cacheDir})
	offlineWithin(t, time.Minute, "the view after the remount", func() error {
		offlineCheckView(t, m, want, nil)
		return nil
	})
	m.sync(2 * time.Minute)
	sameTree(t, want, e.objects())
	for _, d := range offlineTreeDiffs(want, localTree(t, m.dir)) {
		t.Errorf("the mount after sync: %s", d)
	}
}

// offlineEditAt opens path for writing without truncation, writes data at
// off and closes it, returning the first error.
func offlineEditAt(path string, off int64, data []byte) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, off); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// offlineWithin runs fn and fails the test if it returns an error or does
// not return within d: on a mount, a hang is a failure, not a stuck test.
func offlineWithin(t *testing.T, d time.Duration, what string, fn func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	case <-time.After(d):
		t.Fatalf("%s: still running after %v", what, d)
	}
}

// offlineCheckView checks that the mount shows exactly want: every folder,
// every file with its size, and its bytes unless sizeOnly says not to read
// it (content that is not cached, while offline).
func offlineCheckView(t *testing.T, m *mount, want map[string][]byte, sizeOnly map[string]bool) {
	t.Helper()
	got := make(map[string]bool)
	err := offlineWalk(m.dir, func(rel string, info fs.FileInfo) {
		key := rel
		if info.IsDir() {
			key += "/"
		}
		got[key] = true
		w, ok := want[key]
		switch {
		case !ok:
			t.Errorf("the mount shows %s, which should not exist", key)
		case info.IsDir():
		case info.Size() != int64(len(w)):
			t.Errorf("%s: size %d, want %d", key, info.Size(), len(w))
		case !sizeOnly[key]:
			data, err := os.ReadFile(m.path(rel))
			if err != nil {
				t.Errorf("read %s: %v", key, err)
			} else if !bytes.Equal(data, w) {
				t.Errorf("%s: %s", key, bytesDiffSummary(data, w))
			}
		}
	})
	if err != nil {
		t.Errorf("walk the mount: %v", err)
	}
	for k := range want {
		if !got[k] {
			t.Errorf("the mount does not show %s", k)
		}
	}
}

// offlineWalk calls fn for every entry under root, with its path relative to
// root, using only readdir and lstat: no content is read.
func offlineWalk(root string, fn func(rel string, info fs.FileInfo)) error {
	var walk func(rel string) error
	walk = func(rel string) error {
		ents, err := os.ReadDir(root + "/" + rel)
		if err != nil {
			return err
		}
		for _, ent := range ents {
			p := ent.Name()
			if rel != "" {
				p = rel + "/" + p
			}
			info, err := os.Lstat(root + "/" + p)
			if err != nil {
				return err
			}
			fn(p, info)
			if info.IsDir() {
				if err := walk(p); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return walk("")
}

// offlineTreeDiffs compares a tree (as localTree returns it) with another
// one or with the bucket, the way sameTree does, and returns the
// differences instead of failing.
func offlineTreeDiffs(want, got map[string][]byte) []string {
	var diffs []string
	for k, v := range want {
		if strings.HasSuffix(k, "/") {
			if _, ok := got[k]; ok {
				continue
			}
			implied := false
			for gk := range got {
				if strings.HasPrefix(gk, k) {
					implied = true
					break
				}
			}
			if !implied {
				diffs = append(diffs, "folder missing: "+k)
			}
			continue
		}
		if gv, ok := got[k]; !ok {
			diffs = append(diffs, "file missing: "+k)
		} else if !bytes.Equal(v, gv) {
			diffs = append(diffs, fmt.Sprintf("content of %s differs: %s", k, bytesDiffSummary(gv, v)))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, "extra: "+k)
		}
	}
	sort.Strings(diffs)
	return diffs
}

func offlineKeys(objs map[string][]byte) []string {
	keys := make([]string, 0, len(objs))
	for k := range objs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// offlineStatus is the part of `nimbus status --json` these tests read.
type offlineStatus struct {
	Online  bool `json:"online"`
	Uploads struct {
		Pending      int   `json:"pending"`
		PendingBytes int64 `json:"pending_bytes"`
	} `json:"uploads"`
	Conflicts json.RawMessage `json:"conflicts"`
}

// offlineStatusOf runs nimbus status --json, which must answer offline
// too, within 30s.
func offlineStatusOf(t *testing.T, m *mount) offlineStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, nimbusBin, "status", "--json", m.dir)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nimbus status --json: %v: %s", err, stderr.String())
	}
	var st offlineStatus
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, out)
	}
	if s := strings.TrimSpace(string(st.Conflicts)); s == "null" || s == "[]" {
		st.Conflicts = nil
	}
	return st
}

// offlineUnmount runs nimbus unmount, which must return within d, and
// waits for the daemon to exit.
func offlineUnmount(t *testing.T, m *mount, how string, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	switch how {
	case "unmount":
		out, err := exec.CommandContext(ctx, nimbusBin, "unmount", m.dir).CombinedOutput()
		if ctx.Err() != nil {
			t.Fatalf("nimbus unmount with pending uploads and the store down: still running after %v", d)
		}
		if err != nil {
			t.Fatalf("nimbus unmount with pending uploads and the store down: %v: %s", err, out)
		}
	case "SIGINT":
		if err := m.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
	case "SIGTERM":
		if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("unknown way to unmount %q", how)
	}
	select {
	case <-m.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon still running 20s after %s", how)
	}
	if isMounted(m.dir) {
		t.Fatalf("%s still mounted after %s", m.dir, how)
	}
	if code := m.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("nimbus mount exited with status %d after %s", code, how)
	}
	t.Logf("%s: unmounted in %v with the store down", how, time.Since(start).Round(time.Millisecond))
}
