package integration

import (
	"crypto/sha256"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/integration/s3proxy"
)

// TestUploadedContentStaysCached: a file written on the mount and uploaded
// stays in the block cache as the version it became, so reading it back,
// on the same mount or after a remount of the same cache folder, costs no
// GET (counted at the server). A file larger than --cache-size keeps what
// fits, within the cap. Reads of 1 MiB log no go-fuse splice failures.
func TestUploadedContentStaysCached(t *testing.T) {
	e := newEnv(t)
	proxy := e.startProxy(t)
	cacheDir := t.TempDir()
	m := e.mount(mountOpt{cacheDir: cacheDir, endpoint: proxy.URL})
	const size = 50 << 20
	p := pattern{seed: 611, size: size}
	writePattern(t, m.path("big.bin"), p)
	m.sync(5 * time.Minute)
	if sum, n := e.objectSHA256("big.bin"); n != size || [32]byte(sum) != p.sha256() {
		t.Fatalf("big.bin in the bucket: %d bytes, sha256 %x; want the %d bytes written", n, sum, int64(size))
	}

	readBack := func(m *mount, what string) {
		t.Helper()
		dropPageCache(t)
		before := proxy.Snapshot()
		within(t, 2*time.Minute, "read back big.bin "+what, func() error {
			f, err := os.Open(m.path("big.bin"))
			if err != nil {
				return err
			}
			defer f.Close()
			h := sha256.New()
			n, err := io.Copy(h, f)
			if err != nil {
				return err
			}
			if n != size || [32]byte(h.Sum(nil)) != p.sha256() {
				t.Errorf("read back %s: %d bytes, sha256 %x; want the %d bytes written", what, n, h.Sum(nil), int64(size))
			}
			return nil
		})
		d := proxy.Snapshot().Sub(before)
		if gets := d.Requests[s3proxy.OpGet]; gets != 0 {
			t.Errorf("reading back %s cost %d GET (%d bytes); want 0", what, gets, d.GetBytes)
		}
	}
	readBack(m, "after the upload")
	if strings.Contains(m.stderr.String(), "trySplice") {
		t.Errorf("the mount logged splice failures:\n%s", m.stderr)
	}
	m.unmount()
	m = e.mount(mountOpt{cacheDir: cacheDir, endpoint: proxy.URL})
	readBack(m, "after a remount")
	m.unmount()

	// Larger than the cache: what fits is kept, within --cache-size.
	const capacity = 16 << 20
	small := e.mount(mountOpt{endpoint: proxy.URL, args: []string{"--cache-size", "16MiB"}})
	q := pattern{seed: 612, size: size}
	writePattern(t, small.path("other.bin"), q)
	small.sync(5 * time.Minute)
	st := small.status()
	if st.Cache.Used > capacity || st.Cache.Used < capacity/2 {
		t.Errorf("cache holds %d bytes after uploading %d through a %d-byte cache; want at most the cap and at least half of it",
			st.Cache.Used, int64(size), int64(capacity))
	}
}

// writePattern writes p to path through the mount.
func writePattern(t *testing.T, path string, p pattern) {
	t.Helper()
	within(t, 2*time.Minute, "write "+path, func() error {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, p.reader()); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
}
