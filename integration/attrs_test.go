package integration

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

// TestModeAndMTimeSurvive: chmod and utimens on a new file and on a file
// that came from the store are uploaded as object metadata, survive a
// remount, and show on a second mount (a second machine) once it opened
// the file: a listing carries no metadata, and nimbus does not HEAD every
// listed file.
func TestModeAndMTimeSurvive(t *testing.T) {
	e := newEnv(t)
	e.put("remote.txt", []byte("from the store\n"))
	cacheA := t.TempDir()
	a := e.mount(mountOpt{cacheDir: cacheA})

	mtimeNew := time.Date(2001, 9, 9, 1, 46, 40, 0, time.UTC)
	mtimeRemote := time.Date(1999, 12, 31, 23, 59, 58, 0, time.UTC)
	if err := os.WriteFile(a.path("new.sh"), []byte("#!/bin/sh\necho hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	set := func(name string, mode os.FileMode, mtime time.Time) {
		t.Helper()
		if err := os.Chmod(a.path(name), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(a.path(name), mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	set("new.sh", 0o750, mtimeNew)
	set("remote.txt", 0o600, mtimeRemote)
	want := map[string]struct {
		mode  os.FileMode
		mtime time.Time
		data  string
	}{
		"new.sh":     {0o750, mtimeNew, "#!/bin/sh\necho hi\n"},
		"remote.txt": {0o600, mtimeRemote, "from the store\n"},
	}
	check := func(m *mount, when string) {
		t.Helper()
		for name, w := range want {
			st, err := os.Stat(m.path(name))
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			if st.Mode().Perm() != w.mode || !st.ModTime().Equal(w.mtime) {
				t.Errorf("%s: %s is %v %v, want %v %v", when, name, st.Mode().Perm(), st.ModTime().UTC(), w.mode, w.mtime)
			}
		}
	}
	check(a, "on the mount that changed them")
	a.sync(time.Minute)

	// In the bucket: as metadata, the content unchanged.
	objs := e.objects()
	for name, w := range want {
		if string(objs[name]) != w.data {
			t.Errorf("bucket %s = %q, want %q", name, objs[name], w.data)
		}
		head, err := e.s3.HeadObject(context.Background(), &awss3.HeadObjectInput{Bucket: &e.bucket, Key: &name})
		if err != nil {
			t.Fatal(err)
		}
		if got := head.Metadata["nimbus-mode"]; got != strconv.FormatUint(uint64(w.mode), 8) {
			t.Errorf("bucket %s: nimbus-mode %q, want %o", name, got, w.mode)
		}
		if got := head.Metadata["nimbus-mtime"]; got != strconv.FormatInt(w.mtime.UnixNano(), 10) {
			t.Errorf("bucket %s: nimbus-mtime %q, want %d", name, got, w.mtime.UnixNano())
		}
	}

	a.unmount()
	a = e.mount(mountOpt{cacheDir: cacheA, args: []string{"--dir-ttl", "0s"}})
	check(a, "after a remount (listing again)")

	b := e.mount(mountOpt{})
	for name := range want {
		if _, err := os.ReadFile(b.path(name)); err != nil {
			t.Fatal(err)
		}
	}
	check(b, "on a second mount, after opening")

	// An edit of the content keeps the mode.
	if err := os.WriteFile(b.path("remote.txt"), []byte("edited on b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b.sync(time.Minute)
	st, err := os.Stat(b.path("remote.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("after an edit, remote.txt has mode %v, want 0600 kept", st.Mode().Perm())
	}
	if _, err := os.ReadFile(a.path("remote.txt")); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(a.path("remote.txt")); err != nil || st.Mode().Perm() != 0o600 || st.Size() != int64(len("edited on b\n")) {
		t.Errorf("mount a after b's edit: %v %v", st, err)
	}
}
