package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestCrashLosingUnsyncedStagedFiles checks promise 4 for small files,
// whose content the journal writes into its record instead of fsyncing
// the staged file: after a SIGKILL followed by what a system crash may do
// to files that were never fsynced (gone, emptied, torn), the restarted
// mount shows every file whose close() returned, byte for byte, and uploads
// exactly that. The store is down from before the writes, so nothing was uploaded
// before the crash.
func TestCrashLosingUnsyncedStagedFiles(t *testing.T) {
	e := newEnv(t)
	cacheDir := t.TempDir()
	m := e.mount(mountOpt{cacheDir: cacheDir})
	if _, err := os.ReadDir(m.dir); err != nil { // listed while online
		t.Fatal(err)
	}
	e.minio.Stop()
	want := map[string][]byte{}
	for i, size := range []int{0, 1, 100, 4096, 4097, 20000, 32 << 10, 200 << 10} {
		name := fmt.Sprintf("f%d.bin", i)
		data := pattern{seed: uint64(40 + i), size: int64(size)}.bytes(0, int64(size))
		if err := os.WriteFile(m.path(name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		want[name] = data
	}
	killNimbus(t, m)
	detachDead(t, m)

	// What a system crash may leave of the unsynced (small) staged files.
	// The large one was fsynced before its close() returned: it stays.
	staging := filepath.Join(cacheDir, "staging")
	des, err := os.ReadDir(staging)
	if err != nil {
		t.Fatal(err)
	}
	damaged := 0
	for i, de := range des {
		path := filepath.Join(staging, de.Name())
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > 32<<10 || fi.Size() == 0 {
			continue
		}
		switch i % 3 {
		case 0:
			err = os.Remove(path)
		case 1:
			err = os.Truncate(path, fi.Size()/2)
		default:
			err = os.WriteFile(path, bytes.Repeat([]byte{0}, int(fi.Size())), 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
		damaged++
	}
	if damaged < 5 {
		t.Fatalf("damaged %d staged files, want the 5 small non-empty ones", damaged)
	}

	m = e.mount(mountOpt{cacheDir: cacheDir})
	for name, data := range want {
		got, err := os.ReadFile(m.path(name))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s after the crash: %d bytes, %v; want its %d bytes", name, len(got), err, len(data))
		}
	}
	e.minio.Restart()
	m.sync(2 * time.Minute)
	objs := e.objects()
	for name, data := range want {
		if got, ok := objs[name]; !ok || !bytes.Equal(got, data) {
			t.Errorf("bucket %s: %d bytes (present %v), want its %d bytes", name, len(got), ok, len(data))
		}
	}
	if len(objs) != len(want) {
		t.Errorf("bucket holds %d objects, want %d (no conflicted copy)", len(objs), len(want))
	}
}
