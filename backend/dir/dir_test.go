package dir

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/conformance"
)

func newStore(t *testing.T) *Store {
	t.Helper()
	s, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if !s.xattrs {
		t.Log("the temp folder's file system has no user xattrs; testing sidecar mode only")
	}
	return s
}

func TestConformance(t *testing.T) {
	conformance.Run(t, func(t *testing.T) backend.Backend { return newStore(t) })
}

// TestConformanceWithoutXattrs runs the suite in the mode used on file
// systems without user xattrs: ETags are hashed each time and metadata is
// kept in sidecar files.
func TestConformanceWithoutXattrs(t *testing.T) {
	conformance.Run(t, func(t *testing.T) backend.Backend {
		s := newStore(t)
		s.xattrs = false
		return s
	})
}

func put(t *testing.T, s *Store, key, content string, cond backend.Cond) backend.ObjectInfo {
	t.Helper()
	info, err := s.Put(context.Background(), key, strings.NewReader(content), int64(len(content)), nil, cond)
	if err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
	return info
}

func tryPut(s *Store, key, content string) error {
	_, err := s.Put(context.Background(), key, strings.NewReader(content), int64(len(content)), nil, backend.Cond{})
	return err
}

func listAll(t *testing.T, s *Store, prefix string, flat bool) (keys, prefixes []string) {
	t.Helper()
	list := s.List
	if flat {
		list = s.ListFlat
	}
	err := list(context.Background(), prefix, func(p backend.Page) error {
		for _, o := range p.Objects {
			keys = append(keys, o.Key)
		}
		prefixes = append(prefixes, p.Prefixes...)
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return keys, prefixes
}

func TestNewErrors(t *testing.T) {
	root := t.TempDir()
	_, err := New(filepath.Join(root, "missing"))
	if !errors.Is(err, backend.ErrNoBucket) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("New(missing) = %v; want ErrNoBucket naming the folder", err)
	}
	file := filepath.Join(root, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(file); !errors.Is(err, backend.ErrNoBucket) {
		t.Fatalf("New(file) = %v; want ErrNoBucket", err)
	}
	s, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	if want := "dir:" + root; s.String() != want {
		t.Fatalf("String() = %q; want %q", s.String(), want)
	}
}

func TestInvalidKeys(t *testing.T) {
	s := newStore(t)
	for _, key := range []string{
		"/abs", "a//b", "./a", "a/./b", "../a", "a/..", "a/../b", "//",
		".nimbus-lock", "a/.nimbus-tmp-1", "a/.nimbus-marker", "a/.nimbus-meta-x", strings.Repeat("n", 256), "a/" + strings.Repeat("n", 256) + "/b",
		"nul\x00byte",
	} {
		if err := tryPut(s, key, ""); !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("Put(%q) = %v; want ErrInvalidKey", key, err)
		}
		if _, err := s.Stat(context.Background(), key); !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("Stat(%q) = %v; want ErrInvalidKey", key, err)
		}
	}
	// 255 bytes is a valid name.
	put(t, s, strings.Repeat("n", 255), "x", backend.Cond{})
}

func TestFileDirectoryClash(t *testing.T) {
	s := newStore(t)
	put(t, s, "a/b/c", "x", backend.Cond{})
	put(t, s, "f", "x", backend.Cond{})
	for _, tc := range []struct{ key, content string }{
		{"a/b", "file where a directory is"},
		{"a", "file where a directory is"},
		{"f/", ""},
		{"f/x", "under a file"},
		{"a/b/c/", ""},
		{"a/b/c/d", "under a file"},
	} {
		err := tryPut(s, tc.key, tc.content)
		if !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("Put(%q) = %v; want ErrInvalidKey", tc.key, err)
		}
	}
	if err := tryPut(s, "m/", "content"); !errors.Is(err, backend.ErrInvalidKey) {
		t.Errorf("Put of a marker with content = %v; want ErrInvalidKey", err)
	}
	// Nothing changed, and no temp files were left behind.
	keys, _ := listAll(t, s, "", true)
	// Folders that only hold keys are prefixes, not objects, as in S3.
	if want := []string{"a/b/c", "f"}; !equal(keys, want) {
		t.Fatalf("ListFlat = %q; want %q", keys, want)
	}
	assertNoTempFiles(t, s.root)
}

func equal(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }

func assertNoTempFiles(t *testing.T, root string) {
	t.Helper()
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".nimbus-tmp-") {
			t.Errorf("temp file left behind: %s", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestInternalFilesHidden(t *testing.T) {
	s := newStore(t)
	s.xattrs = false // so that sidecars exist too
	if _, err := s.Put(context.Background(), "d/f", strings.NewReader("x"), 1, map[string]string{"k": "v"}, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{".nimbus-tmp-stale", "d/.nimbus-tmp-stale", "d/.nimbus-marker"} {
		if err := os.WriteFile(filepath.Join(s.root, p), []byte("junk"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Make the lock file exist.
	if err := s.Delete(context.Background(), "nothing", ""); err != nil {
		t.Fatal(err)
	}
	sidecars, err := filepath.Glob(filepath.Join(s.root, "d", sidecarPrefix+"*"))
	if err != nil || len(sidecars) != 1 {
		t.Fatalf("sidecars = %q, %v; want one", sidecars, err)
	}
	keys, prefixes := listAll(t, s, "", false)
	if len(keys) != 0 || !equal(prefixes, []string{"d/"}) {
		t.Fatalf("List(\"\") = %q %q; want only prefix d/", keys, prefixes)
	}
	keys, _ = listAll(t, s, "", true)
	if !equal(keys, []string{"d/", "d/f"}) {
		t.Fatalf("ListFlat = %q; want [d/ d/f]", keys)
	}
	// Deleting the file removes its sidecar.
	if err := s.Delete(context.Background(), "d/f", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sidecars[0]); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("sidecar after delete: %v; want it gone", err)
	}
}

func TestETagCache(t *testing.T) {
	s := newStore(t)
	if !s.xattrs {
		t.Skip("no user xattrs on this file system")
	}
	info := put(t, s, "f", "hello", backend.Cond{})
	path := filepath.Join(s.root, "f")
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	value, err := getxattr(func(b []byte) (int, error) { return unix.Lgetxattr(path, etagXattr, b) })
	if err != nil || string(value) != stamp(info.ETag, fi) {
		t.Fatalf("etag xattr = %q, %v; want %q", value, err, stamp(info.ETag, fi))
	}

	// A fresh stamp is trusted without hashing: plant a fake one.
	const fake = "0000000000000000000000000000beef"
	if err := unix.Lsetxattr(path, etagXattr, []byte(stamp(fake, fi)), 0); err != nil {
		t.Fatal(err)
	}
	st, err := s.Stat(context.Background(), "f")
	if err != nil || st.ETag != fake {
		t.Fatalf("Stat ETag = %q, %v; want the cached %q", st.ETag, err, fake)
	}
	var listed string
	if err := s.List(context.Background(), "", func(p backend.Page) error {
		listed = p.Objects[0].ETag
		return nil
	}); err != nil || listed != fake {
		t.Fatalf("List ETag = %q, %v; want the cached %q", listed, err, fake)
	}

	// A change made behind the store's back (new mtime) is detected, and
	// the fresh value cached again.
	if err := os.WriteFile(path, []byte("HELLO"), 0o644); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(path, future, future); err != nil {
		t.Fatal(err)
	}
	st, err = s.Stat(context.Background(), "f")
	if err != nil {
		t.Fatal(err)
	}
	want := put(t, newStore(t), "x", "HELLO", backend.Cond{}).ETag
	if st.ETag != want {
		t.Fatalf("Stat ETag after an outside change = %q; want %q", st.ETag, want)
	}
	value, err = getxattr(func(b []byte) (int, error) { return unix.Lgetxattr(path, etagXattr, b) })
	if err != nil || !strings.Contains(string(value), want) {
		t.Fatalf("etag xattr after re-hash = %q, %v; want it to hold %s", value, err, want)
	}
}

func TestMarkerDeleteKeepsNonEmptyDirectory(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	put(t, s, "d/", "", backend.Cond{})
	put(t, s, "d/f", "x", backend.Cond{})
	if err := s.Delete(ctx, "d/", ""); err != nil {
		t.Fatalf("Delete(d/) with content under it: %v", err)
	}
	if _, err := s.Stat(ctx, "d/f"); err != nil {
		t.Fatalf("d/f after deleting the marker: %v", err)
	}
	// The marker is gone and d holds a key: d/ is a prefix, no object, and
	// deleting an absent key is no error (as in S3), whatever the ETag.
	if _, err := s.Stat(ctx, "d/"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Stat(d/) after deleting the marker = %v; want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "d/", "0123456789abcdef0123456789abcdef"); err != nil {
		t.Fatalf("Delete(d/) of the absent marker = %v; want nil", err)
	}
	if err := s.Delete(ctx, "d/f", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "d/", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.root, "d")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("directory d after deleting its marker: %v; want it gone", err)
	}
}

func TestRootRemoved(t *testing.T) {
	parent := t.TempDir()
	root := filepath.Join(parent, "remote")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, "f", "x", backend.Cond{})
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.List(ctx, "", func(backend.Page) error { return nil }); !errors.Is(err, backend.ErrNoBucket) {
		t.Fatalf("List after the root vanished = %v; want ErrNoBucket", err)
	}
	if _, err := s.Stat(ctx, "f"); !errors.Is(err, backend.ErrNoBucket) {
		t.Fatalf("Stat after the root vanished = %v; want ErrNoBucket", err)
	}
	if _, err := s.Get(ctx, "f", 0, -1, ""); !errors.Is(err, backend.ErrNoBucket) {
		t.Fatalf("Get after the root vanished = %v; want ErrNoBucket", err)
	}
}

func TestGetReaderSurvivesReplace(t *testing.T) {
	s := newStore(t)
	put(t, s, "f", "old content", backend.Cond{})
	r, err := s.Get(context.Background(), "f", 0, -1, "")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	put(t, s, "f", "new content, longer", backend.Cond{})
	got, err := io.ReadAll(r)
	if err != nil || string(got) != "old content" {
		t.Fatalf("reader opened before the replace read %q, %v; want the old content", got, err)
	}
}

func TestShortBody(t *testing.T) {
	s := newStore(t)
	_, err := s.Put(context.Background(), "new/f", strings.NewReader("abc"), 10, nil, backend.Cond{})
	if err == nil || errors.Is(err, backend.ErrOffline) {
		t.Fatalf("Put with a short body = %v; want a plain error", err)
	}
	if _, err := s.Stat(context.Background(), "new/f"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Stat after the failed put = %v; want ErrNotFound", err)
	}
	if _, err := os.Stat(filepath.Join(s.root, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("directory made for the failed put: %v; want it removed", err)
	}
	assertNoTempFiles(t, s.root)
}

func TestPutReadsFromCurrentPosition(t *testing.T) {
	s := newStore(t)
	body := strings.NewReader("skip:payload+extra")
	if _, err := body.Seek(5, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(context.Background(), "f", body, 7, nil, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(s.root, "f"))
	if err != nil || string(data) != "payload" {
		t.Fatalf("stored %q, %v; want %q", data, err, "payload")
	}
}

// increment adds one to the number stored under key with a
// compare-and-swap loop, as the upload journal does for conflicts.
func increment(ctx context.Context, s *Store, key string) error {
	for {
		info, err := s.Stat(ctx, key)
		if err != nil {
			return err
		}
		r, err := s.Get(ctx, key, 0, -1, info.ETag)
		if errors.Is(err, backend.ErrPrecondition) {
			continue
		}
		if err != nil {
			return err
		}
		data, err := io.ReadAll(r)
		if cerr := r.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		n, err := strconv.Atoi(string(data))
		if err != nil {
			return err
		}
		next := strconv.Itoa(n + 1)
		_, err = s.Put(ctx, key, strings.NewReader(next), int64(len(next)), nil, backend.Cond{IfMatch: info.ETag})
		if errors.Is(err, backend.ErrPrecondition) {
			continue
		}
		return err
	}
}

func readCounter(t *testing.T, root string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "counter"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(string(data))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCASAcrossStores has two Stores on one root (as two mounts in one
// process would): only the flock serialises them. No increment may be
// lost.
func TestCASAcrossStores(t *testing.T) {
	root := t.TempDir()
	const workers, rounds = 8, 25
	first, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	put(t, first, "counter", "0", backend.Cond{})
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for i := range workers {
		s := first
		if i%2 == 1 {
			if s, err = New(root); err != nil {
				t.Fatal(err)
			}
		}
		wg.Go(func() {
			for range rounds {
				if err := increment(context.Background(), s, "counter"); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := readCounter(t, root); got != workers*rounds {
		t.Fatalf("counter = %d; want %d (lost updates)", got, workers*rounds)
	}
}

const helperEnv = "NIMBUS_DIR_TEST_HELPER"

// TestCASAcrossProcesses runs increment loops in several processes (this
// test binary, re-executed) on one root. No increment may be lost.
func TestCASAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts subprocesses")
	}
	root := t.TempDir()
	s, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, "counter", "0", backend.Cond{})
	const procs, rounds = 4, 25
	start := filepath.Join(t.TempDir(), "start")
	cmds := make([]*exec.Cmd, procs)
	for i := range cmds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.v")
		cmd.Env = append(os.Environ(),
			helperEnv+"=1", "HELPER_ROOT="+root, "HELPER_START="+start, fmt.Sprintf("HELPER_ROUNDS=%d", rounds))
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[i] = cmd
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("helper %d output:\n%s", i, out.String())
			}
		})
	}
	// Release all helpers at once, for the most contention.
	if err := os.WriteFile(start, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper %d: %v", i, err)
		}
	}
	if got := readCounter(t, root); got != procs*rounds {
		t.Fatalf("counter = %d; want %d (lost updates)", got, procs*rounds)
	}
}

// TestHelperProcess is the body of TestCASAcrossProcesses's subprocesses.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("run by TestCASAcrossProcesses")
	}
	s, err := New(os.Getenv("HELPER_ROOT"))
	if err != nil {
		t.Fatal(err)
	}
	rounds, err := strconv.Atoi(os.Getenv("HELPER_ROUNDS"))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(os.Getenv("HELPER_START")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never released")
		}
		time.Sleep(time.Millisecond)
	}
	for range rounds {
		if err := increment(context.Background(), s, "counter"); err != nil {
			t.Fatal(err)
		}
	}
}

func TestLockHonoursContext(t *testing.T) {
	root := t.TempDir()
	s, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	// Another holder of the flock (another process, in real life).
	f, err := os.OpenFile(filepath.Join(root, lockName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = s.Put(ctx, "k", strings.NewReader("x"), 1, nil, backend.Cond{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Put while another holds the lock = %v; want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Put took %v to give up", d)
	}
	assertNoTempFiles(t, root)
	if err := unix.Flock(int(f.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	put(t, s, "k", "x", backend.Cond{})
}

func TestListSkipsSymlinksAndSpecialFiles(t *testing.T) {
	s := newStore(t)
	put(t, s, "real", "x", backend.Cond{})
	if err := os.Symlink("real", filepath.Join(s.root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(s.root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	keys, prefixes := listAll(t, s, "", false)
	if !equal(keys, []string{"real"}) || len(prefixes) != 0 {
		t.Fatalf("List = %q %q; want only real", keys, prefixes)
	}
	for _, key := range []string{"link", "fifo"} {
		if _, err := s.Stat(context.Background(), key); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("Stat(%q) = %v; want ErrNotFound", key, err)
		}
	}
}

func TestListSkipsUnreadableFile(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads every file")
	}
	s := newStore(t)
	put(t, s, "ok", "x", backend.Cond{})
	if err := os.WriteFile(filepath.Join(s.root, "secret"), []byte("x"), 0o000); err != nil {
		t.Fatal(err)
	}
	keys, _ := listAll(t, s, "", false)
	if !equal(keys, []string{"ok"}) {
		t.Fatalf("List = %q; want only ok", keys)
	}
}

// TestFoldersFollowS3Semantics: a folder that only held keys goes with its
// last key; an explicit marker folder stays until the marker is deleted,
// whichever order the deletes come in.
func TestFoldersFollowS3Semantics(t *testing.T) {
	root := t.TempDir()
	s, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	put := func(key, content string) {
		t.Helper()
		if _, err := s.Put(ctx, key, strings.NewReader(content), int64(len(content)), nil, backend.Cond{}); err != nil {
			t.Fatalf("put %q: %v", key, err)
		}
	}
	del := func(key string) {
		t.Helper()
		if err := s.Delete(ctx, key, ""); err != nil {
			t.Fatalf("delete %q: %v", key, err)
		}
	}
	exists := func(rel string) bool {
		_, err := os.Stat(filepath.Join(root, rel))
		return err == nil
	}
	put("kept/", "")
	put("kept/implicit/x", "x")
	del("kept/implicit/x")
	if exists("kept/implicit") {
		t.Error("a folder that only held a deleted key survives it")
	}
	if !exists("kept") {
		t.Error("an explicit marker folder was removed with the keys under it")
	}
	// Marker deleted before the last key under it (a folder rename may do
	// this): the folder goes with the key.
	put("gone/", "")
	put("gone/y", "y")
	del("gone/")
	if !exists("gone/y") {
		t.Fatal("deleting a marker removed the keys under it")
	}
	del("gone/y")
	if exists("gone") {
		t.Error("a folder whose marker and keys were deleted survives")
	}
	del("kept/")
	if exists("kept") {
		t.Error("an empty marker folder survives its delete")
	}
	var prefixes []string
	if err := s.List(ctx, "", func(p backend.Page) error { prefixes = append(prefixes, p.Prefixes...); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(prefixes) != 0 {
		t.Errorf("root still lists %q", prefixes)
	}
}

// Names that merely start like this package's own files are ordinary keys:
// the vfs stores its hidden objects under them.
func TestOtherDotNimbusNamesAreKeys(t *testing.T) {
	s := newStore(t)
	for _, key := range []string{".nimbus-attrs", "d/.nimbus-attrs", ".nimbus-snapshots/m/1"} {
		if err := tryPut(s, key, "x"); err != nil {
			t.Errorf("Put(%q) = %v", key, err)
		}
	}
	var keys []string
	all, _ := listAll(t, s, "", true)
	for _, k := range all {
		if !strings.HasSuffix(k, "/") {
			keys = append(keys, k)
		}
	}
	if want := []string{".nimbus-attrs", ".nimbus-snapshots/m/1", "d/.nimbus-attrs"}; !equal(keys, want) {
		t.Errorf("ListFlat = %q; want %q", keys, want)
	}
}

// A marker Put If-None-Match over a folder that exists only because a key
// is under it is created (S3 has no object there), and keeps the folder
// when that key goes: the folder the user made survives.
func TestMarkerOverAnImplicitFolder(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	put(t, s, "r/q/f", "x", backend.Cond{})
	if _, err := s.Put(ctx, "r/q/", strings.NewReader(""), 0, nil, backend.Cond{IfNoneMatch: true}); err != nil {
		t.Fatalf("Put(r/q/) If-None-Match over an implicit folder: %v", err)
	}
	if err := s.Delete(ctx, "r/q/f", ""); err != nil {
		t.Fatal(err)
	}
	keys, _ := listAll(t, s, "", true)
	if want := []string{"r/q/"}; !equal(keys, want) {
		t.Fatalf("ListFlat = %q; want %q", keys, want)
	}
}

// An empty folder made on the remote's disk by hand (no key under it, no
// marker file) is listed as a marker, so that it shows, as before.
func TestEmptyFolderIsAMarker(t *testing.T) {
	s := newStore(t)
	if err := os.MkdirAll(filepath.Join(s.root, "e"), 0o755); err != nil {
		t.Fatal(err)
	}
	keys, _ := listAll(t, s, "", true)
	if want := []string{"e/"}; !equal(keys, want) {
		t.Fatalf("ListFlat = %q; want %q", keys, want)
	}
}

// gateReader blocks its first Read until release is closed, so that a Put
// can be held mid-stage: its folder made, its temp file open.
type gateReader struct {
	started chan struct{}
	release chan struct{}
	r       io.ReadSeeker
	once    sync.Once
}

func (g *gateReader) Seek(off int64, whence int) (int64, error) { return g.r.Seek(off, whence) }

func (g *gateReader) Read(p []byte) (int, error) {
	g.once.Do(func() { close(g.started); <-g.release })
	return g.r.Read(p)
}

// A folder that a Put in flight made for its key is no object: a marker
// Put If-None-Match at the same moment is created, not refused as already
// there, and the folder stays a marker once the key lands. (A folder
// rename uploads its subfolder's marker and the files in it at once.)
func TestMarkerBesideAPutInFlight(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	g := &gateReader{started: make(chan struct{}), release: make(chan struct{}), r: strings.NewReader("bb")}
	done := make(chan error, 1)
	go func() {
		_, err := s.Put(ctx, "d/sub/b", g, 2, nil, backend.Cond{IfNoneMatch: true})
		done <- err
	}()
	select {
	case <-g.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the Put never read its body")
	}
	if keys, _ := listAll(t, s, "", true); len(keys) != 0 {
		t.Errorf("ListFlat with only a Put in flight = %q; want nothing", keys)
	}
	for _, marker := range []string{"d/", "d/sub/"} {
		if _, err := s.Put(ctx, marker, strings.NewReader(""), 0, nil, backend.Cond{IfNoneMatch: true}); err != nil {
			t.Errorf("marker Put If-None-Match beside a Put in flight: %v", err)
		}
	}
	close(g.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	keys, _ := listAll(t, s, "", true)
	if want := []string{"d/", "d/sub/", "d/sub/b"}; !equal(keys, want) {
		t.Fatalf("ListFlat = %q; want %q", keys, want)
	}
}

// A cold listing hashes every file of a folder: the hash must reuse its read
// buffer, or a 100,000-file folder allocates gigabytes and the GC sets the
// listing's pace.
func TestHashingReusesItsBuffer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, bytes.Repeat([]byte("x"), 100<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := md5Of(f, 100<<10); err != nil { // fills the pool
		t.Fatal(err)
	}
	const hashes = 100
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range hashes {
		if _, err := md5Of(f, 100<<10); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if perHash := (after.TotalAlloc - before.TotalAlloc) / hashes; perHash > 4<<10 {
		t.Fatalf("hashing a file allocates %d bytes, want a reused buffer (< 4 KiB)", perHash)
	}
	want := md5.Sum(bytes.Repeat([]byte("x"), 100<<10))
	if got, _ := md5Of(f, 100<<10); got != hex.EncodeToString(want[:]) {
		t.Fatalf("md5Of = %s, want %x", got, want)
	}
}
