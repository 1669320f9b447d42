package integration

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// putTree uploads dirs×files small objects (dNNN/fNNN) in parallel and
// returns the content of each key.
func (e *env) putTree(dirs, files int) map[string][]byte {
	e.t.Helper()
	want := make(map[string][]byte, dirs*files)
	for d := range dirs {
		for f := range files {
			key := fmt.Sprintf("d%03d/f%03d", d, f)
			want[key] = []byte(strings.Repeat(key, 1+(d+f)%7))
		}
	}
	objs := make(map[string]io.ReadSeeker, len(want))
	sizes := make(map[string]int64, len(want))
	for k, v := range want {
		objs[k], sizes[k] = bytes.NewReader(v), int64(len(v))
	}
	e.putAll(objs, sizes)
	return want
}

// TestListingCostsAndNoBodies checks promise 1: ls -lR of 10,000 objects in
// 100 directories costs one ListObjectsV2 per directory, no HEAD and no GET,
// the sizes come from the listing, and a second ls within --dir-ttl costs
// nothing at all.
func TestListingCostsAndNoBodies(t *testing.T) {
	e := newEnv(t)
	want := e.putTree(100, 100)
	// --trash 0: the trash sweep a mount starts with lists .nimbus-trash/
	// in the background, and could land inside the count below.
	m := e.mount(mountOpt{args: []string{"--dir-ttl", "5m", "--trash", "0"}})

	before := m.requests()
	out := run(t, 2*time.Minute, "ls", "-lR", m.dir)
	d := delta(before, m.requests())
	t.Logf("cold ls -lR requests: %v", d)
	if d["ListObjectsV2"] > 101 || d["ListObjectsV2"] < 101 {
		t.Errorf("cold ls -lR made %d ListObjectsV2, want exactly 101 (root + 100 dirs)", d["ListObjectsV2"])
	}
	if d["HeadObject"] != 0 || d["GetObject"] != 0 {
		t.Errorf("cold ls -lR made %d HeadObject and %d GetObject, want 0", d["HeadObject"], d["GetObject"])
	}

	// Every file shows, with the size the listing reported.
	files := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "-") {
			files++
		}
	}
	if files != len(want) {
		t.Errorf("ls -lR shows %d files, want %d", files, len(want))
	}
	for _, key := range []string{"d000/f000", "d042/f017", "d099/f099"} {
		st, err := os.Stat(m.path(key))
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() != int64(len(want[key])) {
			t.Errorf("%s: size %d, want %d", key, st.Size(), len(want[key]))
		}
	}

	before = m.requests()
	run(t, 2*time.Minute, "ls", "-lR", m.dir)
	run(t, 2*time.Minute, "find", m.dir, "-type", "f", "-size", "+1c")
	if d := delta(before, m.requests()); len(d) != 0 {
		t.Errorf("warm ls -lR and find made requests: %v, want none", d)
	}
}

// TestDirectoryMarkersAndOddKeys checks that dir/ markers show as empty
// directories and that keys with characters XML cannot carry list and read.
func TestDirectoryMarkersAndOddKeys(t *testing.T) {
	e := newEnv(t)
	e.put("empty/", nil)
	e.put("a/inner-empty/", nil)
	e.put("a/file.txt", []byte("hello"))
	// MinIO refuses keys with empty or dot segments and names over 255
	// bytes, and cannot list a key that is both an object and a prefix
	// (AWS S3 takes all of them): vfs.TestListingToEntries covers those.
	e.put("a/ctl\x01name", []byte("control character"))
	// MinIO takes keys up to 1024 bytes with segments up to 255, as S3 does,
	// but refuses some long ones on its disk layout: 4×200 bytes works.
	long := strings.Repeat("d", 200)
	e.put(strings.Repeat(long+"/", 4), nil)
	m := e.mount(mountOpt{})

	for _, dir := range []string{"empty", "a/inner-empty"} {
		st, err := os.Stat(m.path(dir))
		if err != nil {
			t.Fatalf("marker %s/: %v", dir, err)
		}
		if !st.IsDir() {
			t.Fatalf("marker %s/ is not a directory", dir)
		}
		ents, err := os.ReadDir(m.path(dir))
		if err != nil || len(ents) != 0 {
			t.Fatalf("marker %s/ should be an empty dir: %v %v", dir, ents, err)
		}
	}
	ents, err := os.ReadDir(m.path("a"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, en := range ents {
		names = append(names, en.Name())
	}
	if got, want := strings.Join(names, ","), "ctl\x01name,file.txt,inner-empty"; got != want {
		t.Errorf("a/ lists %q, want %q", got, want)
	}
	if data, err := os.ReadFile(m.path("a/file.txt")); err != nil || string(data) != "hello" {
		t.Errorf("a/file.txt = %q, %v", data, err)
	}

	if data, err := os.ReadFile(m.path("a/ctl\x01name")); err != nil || string(data) != "control character" {
		t.Errorf("a/ctl\\x01name = %q, %v", data, err)
	}
	// Names POSIX allows but S3 refuses get an errno that says why.
	if _, err := os.Stat(m.path("a/bad\xffname")); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("stat of a name that is not UTF-8: %v, want EINVAL", err)
	}
	deep := m.dir
	for range 4 {
		deep = filepath.Join(deep, long)
	}
	deep = filepath.Join(deep, strings.Repeat("n", 250)) // key: 804 + 250 > 1024 bytes
	if _, err := os.Stat(deep); !errors.Is(err, syscall.ENAMETOOLONG) {
		t.Errorf("stat of a path whose key exceeds 1024 bytes: %v, want ENAMETOOLONG", err)
	}
	if st := m.status(); len(st.Skipped) != 0 {
		t.Errorf("nothing here needs skipping, status reports %v", st.Skipped)
	}
}

// dropPageCache makes the next reads reach the mount, so that a test of the
// block cache is not answered by the kernel.
func dropPageCache(t testing.TB) {
	t.Helper()
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot drop the page cache (needs root): %v", err)
		}
		t.Skipf("cannot drop the page cache (needs root): %v", err)
	}
}

// contentBytes returns the bytes of data (not holes) in the files under dir,
// found with SEEK_DATA/SEEK_HOLE: what the cache really holds, without the
// file system's own bookkeeping that st_blocks also counts.
func contentBytes(t testing.TB, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || !info.Mode().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		fd := int(f.Fd())
		for off := int64(0); off < info.Size(); {
			data, err := unix.Seek(fd, off, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) {
				break // no data after off
			}
			if err != nil {
				return err
			}
			hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
			if err != nil {
				return err
			}
			total += hole - data
			off = hole
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// allocated returns the bytes allocated on disk under dir (st_blocks).
func allocated(t testing.TB, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && info.Mode().IsRegular() {
			total += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// checkCacheOnDisk checks the content held under blocksDir against the cap,
// allowing the file system a little bookkeeping (extent trees) beyond it.
func checkCacheOnDisk(t testing.TB, when, blocksDir string, capBytes int64) {
	t.Helper()
	content, alloc := contentBytes(t, blocksDir), allocated(t, blocksDir)
	t.Logf("%s: cache holds %d bytes of content (%d allocated), cap %d", when, content, alloc, capBytes)
	if content > capBytes {
		t.Errorf("%s: the cache holds %d bytes of content, cap %d", when, content, capBytes)
	}
	if alloc > capBytes+1<<20 {
		t.Errorf("%s: the cache folder allocates %d bytes, cap %d", when, alloc, capBytes)
	}
}

func readRange(t testing.TB, path string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	got, err := f.ReadAt(buf, off)
	if err != nil && err != io.EOF {
		t.Fatalf("read %s at %d: %v", path, off, err)
	}
	return buf[:got]
}

func fileSHA(t testing.TB, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

const bigSize = 1 << 30

// TestBigObject checks promises 2 and 3 on a 1 GiB object: reads fetch only
// what they need, the data is exact, and the cache stays within its cap,
// evicts by LRU and keeps what it holds across a remount.
func TestBigObject(t *testing.T) {
	e := newEnv(t)
	big := pattern{seed: 1, size: bigSize}
	e.putStream("big.bin", big.reader(), big.size)
	wantSHA := big.sha256()

	t.Run("HeadMovesLittle", func(t *testing.T) {
		m := e.mount(mountOpt{})
		before := m.requests()
		out := run(t, time.Minute, "head", "-c", "1", m.path("big.bin"))
		d := delta(before, m.requests())
		t.Logf("head -c 1: %v", d)
		if !bytes.Equal(out, big.bytes(0, 1)) {
			t.Errorf("head -c 1 = %x, want %x", out, big.bytes(0, 1))
		}
		if d["bytes_in"] > 4<<20 {
			t.Errorf("head -c 1 moved %d bytes, want at most 4 MiB", d["bytes_in"])
		}
		if d["bytes_in"] == 0 {
			t.Errorf("head -c 1 moved no bytes: the read was not served by the store")
		}
	})

	t.Run("BoundedCacheLRUAndRemount", func(t *testing.T) {
		cacheDir := t.TempDir()
		const capBytes = 64 << 20
		m := e.mount(mountOpt{cacheDir: cacheDir, args: []string{"--cache-size", "64MiB"}})
		if got := fileSHA(t, m.path("big.bin")); got != wantSHA {
			t.Fatalf("cat of big.bin: sha256 %x, want %x", got, wantSHA)
		}
		blocksDir := filepath.Join(cacheDir, "blocks")
		checkCacheOnDisk(t, "after reading 1 GiB", blocksDir, capBytes)
		st := m.status()
		if st.Cache.Used > capBytes || st.Cache.Capacity != capBytes {
			t.Errorf("status cache: used %d cap %d, want used <= cap = %d", st.Cache.Used, st.Cache.Capacity, capBytes)
		}

		// The most recent blocks are served from disk: no GET.
		tail := int64(bigSize - 8<<20)
		dropPageCache(t)
		before := m.status()
		if got := readRange(t, m.path("big.bin"), tail, 8<<20); !bytes.Equal(got, big.bytes(tail, 8<<20)) {
			t.Fatal("re-read of the last 8 MiB differs")
		}
		after := m.status()
		if d := delta(before.Requests, after.Requests); d["GetObject"] != 0 {
			t.Errorf("re-reading the most recent 8 MiB made %d GETs, want 0", d["GetObject"])
		}
		if after.Cache.Hits == before.Cache.Hits {
			t.Errorf("the re-read did not reach the block cache (no hits): the kernel answered it")
		}
		// The oldest blocks were evicted: reading them costs GETs again.
		if got := readRange(t, m.path("big.bin"), 0, 1<<20); !bytes.Equal(got, big.bytes(0, 1<<20)) {
			t.Fatal("re-read of the first MiB differs")
		}
		if d := delta(after.Requests, m.requests()); d["GetObject"] == 0 {
			t.Errorf("reading the first (least recently used) MiB made no GET: nothing was evicted?")
		}

		// 1,000 random preads through the small cache match the object.
		f, err := os.Open(m.path("big.bin"))
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(7, 7))
		for i := range 1000 {
			n := 1 + rng.Int64N(64<<10)
			off := rng.Int64N(bigSize - n + 1)
			buf := make([]byte, n)
			if _, err := f.ReadAt(buf, off); err != nil {
				t.Fatalf("pread %d at %d+%d: %v", i, off, n, err)
			}
			if !bytes.Equal(buf, big.bytes(off, n)) {
				t.Fatalf("pread %d at %d+%d differs from the object", i, off, n)
			}
		}
		f.Close()

		// What is cached survives a remount with the same cache folder. The
		// page cache is dropped so that this read reaches nimbus and makes
		// the tail the most recently used blocks again.
		dropPageCache(t)
		if got := readRange(t, m.path("big.bin"), tail, 8<<20); !bytes.Equal(got, big.bytes(tail, 8<<20)) {
			t.Fatal("tail read differs")
		}
		m.unmount()
		checkCacheOnDisk(t, "after unmount", blocksDir, capBytes)
		m2 := e.mount(mountOpt{cacheDir: cacheDir, args: []string{"--cache-size", "64MiB"}})
		dropPageCache(t)
		before = m2.status()
		if got := readRange(t, m2.path("big.bin"), tail, 8<<20); !bytes.Equal(got, big.bytes(tail, 8<<20)) {
			t.Fatal("tail read after remount differs")
		}
		after = m2.status()
		if d := delta(before.Requests, after.Requests); d["GetObject"] != 0 {
			t.Errorf("after remount, reading cached blocks made %d GETs, want 0", d["GetObject"])
		}
		if after.Cache.Hits == before.Cache.Hits {
			t.Errorf("after remount the read did not reach the block cache (no hits)")
		}
	})
}

// TestConcurrentReadersAndFullRead reads one object from several processes
// at once, cold, and checks every copy.
func TestConcurrentReadersAndFullRead(t *testing.T) {
	e := newEnv(t)
	obj := pattern{seed: 3, size: 48<<20 + 12345}
	e.putStream("obj.bin", obj.reader(), obj.size)
	m := e.mount(mountOpt{})
	want := obj.sha256()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			f, err := os.Open(m.path("obj.bin"))
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			h := sha256.New()
			if _, err := io.Copy(h, f); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(h.Sum(nil), want[:]) {
				errs <- fmt.Errorf("a concurrent reader saw different bytes")
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	d := m.requests()
	// Each block is fetched once however many readers want it.
	if max := int64(obj.size + 4<<20); d["bytes_in"] > max {
		t.Errorf("4 readers of a %d-byte object moved %d bytes: blocks were fetched more than once", obj.size, d["bytes_in"])
	}
}
