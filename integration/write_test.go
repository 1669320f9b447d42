package integration

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

// sync runs nimbus sync on the mount and fails the test if it does not
// finish within timeout.
func (m *mount) sync(timeout time.Duration) {
	m.t.Helper()
	out, err := exec.Command(nimbusBin, "sync", "--timeout", timeout.String(), m.dir).CombinedOutput()
	if err != nil {
		m.t.Fatalf("nimbus sync: %v: %s", err, out)
	}
}

// objects returns every key of the bucket with its content (markers too),
// except nimbus's own objects (nimbusOwnKey).
func (e *env) objects() map[string][]byte {
	e.t.Helper()
	out, err := e.tryObjects()
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// objectsQuiet is objects for polling while the store may be restarting:
// an error gives an empty map.
func (e *env) objectsQuiet() map[string][]byte {
	out, err := e.tryObjects()
	if err != nil {
		return map[string][]byte{}
	}
	return out
}

func (e *env) tryObjects() (map[string][]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out := make(map[string][]byte)
	p := awss3.NewListObjectsV2Paginator(e.s3, &awss3.ListObjectsV2Input{Bucket: &e.bucket})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, o := range page.Contents {
			if nimbusOwnKey(*o.Key) {
				continue
			}
			obj, err := e.s3.GetObject(ctx, &awss3.GetObjectInput{Bucket: &e.bucket, Key: o.Key})
			if err != nil {
				return nil, err
			}
			data, err := io.ReadAll(obj.Body)
			obj.Body.Close()
			if err != nil {
				return nil, err
			}
			out[*o.Key] = data
		}
	}
	return out, nil
}

// localTree returns every file under root with its content, and every
// directory with a trailing "/", keyed like the bucket.
func localTree(t testing.TB, root string) map[string][]byte {
	t.Helper()
	out := make(map[string][]byte)
	err := filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case rel == ".":
		case info.IsDir():
			out[filepath.ToSlash(rel)+"/"] = nil
		default:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[filepath.ToSlash(rel)] = data
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sameTree compares a local tree with the bucket: every file with its
// bytes, and every folder either as a marker or implied by a key under it.
func sameTree(t testing.TB, local, bucket map[string][]byte) {
	t.Helper()
	var diffs []string
	for k, v := range local {
		if strings.HasSuffix(k, "/") {
			if _, ok := bucket[k]; ok {
				continue
			}
			implied := false
			for bk := range bucket {
				if strings.HasPrefix(bk, k) {
					implied = true
					break
				}
			}
			if !implied {
				diffs = append(diffs, "folder missing in the bucket: "+k)
			}
			continue
		}
		if bv, ok := bucket[k]; !ok {
			diffs = append(diffs, "file missing in the bucket: "+k)
		} else if !bytes.Equal(v, bv) {
			diffs = append(diffs, "content differs: "+k)
		}
	}
	for k := range bucket {
		if _, ok := local[k]; !ok {
			diffs = append(diffs, "extra in the bucket: "+k)
		}
	}
	sort.Strings(diffs)
	for _, d := range diffs {
		t.Error(d)
	}
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestWriteOperations drives every mutating operation through ordinary
// syscalls, then checks that the bucket equals the mount after nimbus sync,
// and that a fresh mount (another cache folder) sees the same.
func TestWriteOperations(t *testing.T) {
	e := newEnv(t)
	big := pattern{seed: 41, size: 3<<20 + 7}
	e.putStream("remote/big.bin", big.reader(), big.size)
	e.put("remote/dir/a.txt", []byte("alpha"))
	e.put("remote/dir/sub/b.txt", []byte("beta"))
	e.put("remote/victim.txt", []byte("to be replaced"))
	e.put("remote/gone.txt", []byte("to be deleted"))
	m := e.mount(mountOpt{})

	// Create and write.
	writeFile(t, m.path("new.txt"), []byte("hello"))
	// Random writes into a remote file whose content is not cached.
	f, err := os.OpenFile(m.path("remote/big.bin"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := big.bytes(0, big.size)
	for _, off := range []int64{0, 1<<20 - 3, 2<<20 + 11, big.size - 5} {
		patch := []byte("PATCH")
		if _, err := f.WriteAt(patch, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], patch)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// O_APPEND, O_TRUNC, truncate up and down, ftruncate.
	af, err := os.OpenFile(m.path("new.txt"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := af.Write([]byte(" world")); err != nil {
		t.Fatal(err)
	}
	af.Close()
	writeFile(t, m.path("trunc.txt"), []byte("0123456789"))
	if err := os.Truncate(m.path("trunc.txt"), 4); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(m.path("trunc.txt"), 6); err != nil {
		t.Fatal(err)
	}
	tf, err := os.OpenFile(m.path("remote/dir/a.txt"), os.O_RDWR|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tf.Write([]byte("ALPHA!")); err != nil {
		t.Fatal(err)
	}
	if err := tf.Truncate(3); err != nil {
		t.Fatal(err)
	}
	tf.Close()
	// Folders.
	if err := os.MkdirAll(m.path("made/deeper/empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, m.path("made/deeper/f.txt"), []byte("in a new folder"))
	if err := os.Mkdir(m.path("made/gone"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(m.path("made/gone")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Rmdir(m.path("made/deeper")); !errors.Is(err, syscall.ENOTEMPTY) {
		t.Errorf("rmdir of a non-empty folder: %v, want ENOTEMPTY", err)
	}
	// Renames: a file, over an existing file, a folder with children.
	if err := os.Rename(m.path("new.txt"), m.path("made/renamed.txt")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, m.path("replacement.txt"), []byte("replacement"))
	if err := os.Rename(m.path("replacement.txt"), m.path("remote/victim.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(m.path("remote/dir"), m.path("moved-dir")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(m.path("remote/gone.txt")); err != nil {
		t.Fatal(err)
	}
	// Open-unlinked files keep working until closed, and are not uploaded.
	writeFile(t, m.path("tmp.txt"), []byte("temporary"))
	uf, err := os.OpenFile(m.path("tmp.txt"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(m.path("tmp.txt")); err != nil {
		t.Fatal(err)
	}
	if _, err := uf.WriteAt([]byte("TEMP"), 0); err != nil {
		t.Errorf("write to an open unlinked file: %v", err)
	}
	buf := make([]byte, 9)
	if _, err := uf.ReadAt(buf, 0); err != nil || string(buf) != "TEMPorary" {
		t.Errorf("read of an open unlinked file: %q %v", buf, err)
	}
	uf.Close()
	// Unsupported operations fail clearly.
	if err := os.Link(m.path("trunc.txt"), m.path("hardlink")); err == nil {
		t.Error("hard link succeeded; want an error")
	} else {
		t.Logf("hard link: %v", err)
	}
	// A symlink is an object whose body is its target.
	if err := os.Symlink("trunc.txt", m.path("symlink")); err != nil {
		t.Errorf("symlink: %v", err)
	}
	checkLink := func(root string) {
		t.Helper()
		if target, err := os.Readlink(filepath.Join(root, "symlink")); err != nil || target != "trunc.txt" {
			t.Errorf("readlink %s/symlink = %q, %v; want trunc.txt", root, target, err)
		}
	}
	checkLink(m.dir)

	// What the mount shows, before and after upload.
	expect := map[string]string{
		"made/renamed.txt":    "hello world",
		"trunc.txt":           "0123\x00\x00",
		"moved-dir/a.txt":     "ALP",
		"moved-dir/sub/b.txt": "beta",
		"made/deeper/f.txt":   "in a new folder",
		"remote/victim.txt":   "replacement",
	}
	check := func(root string) {
		t.Helper()
		for p, want := range expect {
			got, err := os.ReadFile(filepath.Join(root, p))
			if err != nil || string(got) != want {
				t.Errorf("%s = %q, %v; want %q", p, got, err, want)
			}
		}
		if got := fileSHA(t, filepath.Join(root, "remote/big.bin")); got != sha(want) {
			t.Errorf("remote/big.bin after random writes differs")
		}
		for _, p := range []string{"new.txt", "remote/dir", "remote/gone.txt", "tmp.txt", "made/gone", "replacement.txt"} {
			if _, err := os.Stat(filepath.Join(root, p)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s should not exist: %v", p, err)
			}
		}
		if st, err := os.Stat(filepath.Join(root, "made/deeper/empty")); err != nil || !st.IsDir() {
			t.Errorf("empty folder made/deeper/empty: %v", err)
		}
	}
	check(m.dir)
	m.sync(2 * time.Minute)
	check(m.dir)
	// localTree reads through the link; the bucket holds its target.
	local, objs := localTree(t, m.dir), e.objects()
	if string(objs["symlink"]) != "trunc.txt" {
		t.Errorf("bucket symlink body = %q; want trunc.txt", objs["symlink"])
	}
	delete(local, "symlink")
	delete(objs, "symlink")
	sameTree(t, local, objs)

	other := e.mount(mountOpt{})
	check(other.dir)
	checkLink(other.dir)
}

func sha(b []byte) [32]byte { return pattern{}.shaOf(b) }
