package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/integration/s3proxy"
)

// gatedProxy stands between a mount and MinIO. While down it answers 502,
// which the mount takes for an unreachable store, so a test can keep the
// mount offline while another client uses MinIO directly. It records every
// PutObject (key and size) and counts GetObject requests per key.
type gatedProxy struct {
	url    string
	bucket string
	proxy  *s3proxy.Proxy
	down   atomic.Bool

	mu   sync.Mutex
	puts []proxyPut     // GUARDED_BY(mu)
	gets map[string]int // GUARDED_BY(mu)
}

type proxyPut struct {
	key  string
	size int64
}

func startGatedProxy(t *testing.T, target, bucket string) *gatedProxy {
	t.Helper()
	p, err := s3proxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedProxy{bucket: bucket, proxy: p, gets: map[string]int{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: g, ReadHeaderTimeout: time.Minute}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("gated proxy: %v", err)
		}
	}()
	t.Cleanup(func() { srv.Close() })
	g.url = "http://" + ln.Addr().String()
	return g
}

func (g *gatedProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if g.down.Load() {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	key, _ := strings.CutPrefix(r.URL.Path, "/"+g.bucket+"/")
	switch s3proxy.Classify(r) {
	case s3proxy.OpPut:
		size := r.ContentLength
		if d := r.Header.Get("X-Amz-Decoded-Content-Length"); d != "" {
			if n, err := strconv.ParseInt(d, 10, 64); err == nil {
				size = n
			}
		}
		g.mu.Lock()
		g.puts = append(g.puts, proxyPut{key, size})
		g.mu.Unlock()
	case s3proxy.OpGet:
		g.mu.Lock()
		g.gets[key]++
		g.mu.Unlock()
	}
	g.proxy.ServeHTTP(w, r)
}

func (g *gatedProxy) putsSoFar() []proxyPut {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]proxyPut(nil), g.puts...)
}

func (g *gatedProxy) getsOf(keys ...string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, k := range keys {
		n += g.gets[k]
	}
	return n
}

// offlineRenameFixture is the folder both offline-rename tests move: cached
// files, an uncached 8 MiB file, a listed subfolder, a subfolder never
// listed (with one below it), and (added offline) an edit and a new file.
type offlineRenameFixture struct {
	big pattern
}

func newOfflineRenameFixture(e *env) offlineRenameFixture {
	fx := offlineRenameFixture{big: pattern{seed: 91, size: 8<<20 + 5}}
	e.put("dir/a.txt", []byte("alpha"))
	e.put("dir/changed.txt", []byte("before the outage"))
	e.put("dir/edited.txt", []byte("edit me"))
	e.put("dir/sub/s.txt", []byte("in the subfolder"))
	e.put("dir/deep/d.txt", []byte("never listed here"))
	e.put("dir/deep/more/m.txt", []byte("deeper still"))
	e.putStream("dir/big.bin", fx.big.reader(), fx.big.size)
	e.put("other/keep.txt", []byte("not moved"))
	e.put("whole/w.txt", []byte("a folder never opened here"))
	return fx
}

// prepare lists and caches what the user saw online, then (the store being
// down) edits a cached file and creates one, inside the folder.
func (fx offlineRenameFixture) cacheOnline(t *testing.T, m *mount) {
	fx.browse(t, m)
	// Everything but big.bin is read, so cached.
	run(t, time.Minute, "cat", m.path("dir/a.txt"), m.path("dir/changed.txt"), m.path("dir/edited.txt"), m.path("dir/sub/s.txt"))
}

// browse lists what the user looks at: not dir/deep, whose content stays
// unknown to the mount.
func (fx offlineRenameFixture) browse(t *testing.T, m *mount) {
	run(t, time.Minute, "ls", "-l", m.dir, m.path("dir"), m.path("dir/sub"), m.path("other"))
}

func (fx offlineRenameFixture) changeOffline(t *testing.T, m *mount) {
	offlineWithin(t, 30*time.Second, "create dir/offline.txt", func() error {
		return os.WriteFile(m.path("dir/offline.txt"), []byte("made offline"), 0o644)
	})
	offlineWithin(t, 30*time.Second, "edit dir/edited.txt", func() error {
		return os.WriteFile(m.path("dir/edited.txt"), []byte("edited offline"), 0o644)
	})
}

// renameOffline renames dir to newdir with rename(2) itself: no EXDEV, so
// no copy fallback of mv.
func (fx offlineRenameFixture) renameOffline(t *testing.T, m *mount) {
	var err error
	offlineWithin(t, 30*time.Second, "rename(2) dir newdir", func() error {
		err = syscall.Rename(m.path("dir"), m.path("newdir"))
		return nil
	})
	if err != nil {
		t.Fatalf("offline rename(2) of a folder: %v, want success", err)
	}
	offlineWithin(t, 30*time.Second, "rename(2) whole moved", func() error {
		err = syscall.Rename(m.path("whole"), m.path("moved"))
		return nil
	})
	if err != nil {
		t.Fatalf("offline rename(2) of a folder never listed: %v, want success", err)
	}
}

// checkView checks the mount shows the renamed tree, offline: every name,
// every cached file's bytes, the uncached one's size (a read fails with
// EIO, quickly), and no old folder.
func (fx offlineRenameFixture) checkView(t *testing.T, m *mount, when string) {
	t.Helper()
	wantNames := map[string][]string{
		"newdir":     {"a.txt", "big.bin", "changed.txt", "deep", "edited.txt", "offline.txt", "sub"},
		"newdir/sub": {"s.txt"},
	}
	for dir, want := range wantNames {
		ents, err := os.ReadDir(m.path(dir))
		if err != nil {
			t.Errorf("%s: list %s: %v", when, dir, err)
			continue
		}
		var got []string
		for _, de := range ents {
			got = append(got, de.Name())
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: %s lists %v, want %v", when, dir, got, want)
		}
	}
	for name, want := range map[string]string{
		"newdir/a.txt":       "alpha",
		"newdir/changed.txt": "before the outage",
		"newdir/edited.txt":  "edited offline",
		"newdir/offline.txt": "made offline",
		"newdir/sub/s.txt":   "in the subfolder",
	} {
		got, err := os.ReadFile(m.path(name))
		if err != nil || string(got) != want {
			t.Errorf("%s: %s = %q, %v; want %q", when, name, got, err, want)
		}
	}
	if fi, err := os.Stat(m.path("newdir/big.bin")); err != nil || fi.Size() != fx.big.size {
		t.Errorf("%s: stat newdir/big.bin = %v, %v; want %d bytes", when, fi, err, fx.big.size)
	}
	var readErr error
	offlineWithin(t, 30*time.Second, "read the uncached newdir/big.bin offline", func() error {
		_, readErr = os.ReadFile(m.path("newdir/big.bin"))
		return nil
	})
	if !errors.Is(readErr, syscall.EIO) {
		t.Errorf("%s: offline read of the uncached newdir/big.bin: %v, want EIO", when, readErr)
	}
	for _, old := range []string{"dir", "whole"} {
		if _, err := os.Lstat(m.path(old)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: %s still shows after the rename: %v", when, old, err)
		}
	}
	if fi, err := os.Stat(m.path("moved")); err != nil || !fi.IsDir() {
		t.Errorf("%s: the renamed folder never listed: %v, %v", when, fi, err)
	}
}

// checkBucket checks the store after sync: the renamed keys with their
// exact content, no old key but the one changed remotely (kept, with the
// other side's bytes, and also copied under the new name as it is now).
func (fx offlineRenameFixture) checkBucket(t *testing.T, e *env, remoteEdit bool) {
	t.Helper()
	changed := "before the outage"
	if remoteEdit {
		changed = "changed remotely"
	}
	want := map[string][]byte{
		"newdir/a.txt":           []byte("alpha"),
		"newdir/big.bin":         fx.big.bytes(0, fx.big.size),
		"newdir/changed.txt":     []byte(changed),
		"newdir/edited.txt":      []byte("edited offline"),
		"newdir/offline.txt":     []byte("made offline"),
		"newdir/sub/s.txt":       []byte("in the subfolder"),
		"newdir/deep/d.txt":      []byte("never listed here"),
		"newdir/deep/more/m.txt": []byte("deeper still"),
		"other/keep.txt":         []byte("not moved"),
		"moved/w.txt":            []byte("a folder never opened here"),
	}
	if remoteEdit {
		want["dir/changed.txt"] = []byte(changed)
	}
	got := e.objects()
	var problems []string
	for k, data := range got {
		if strings.HasSuffix(k, "/") {
			if strings.HasPrefix(k, "dir/") {
				problems = append(problems, fmt.Sprintf("old folder marker %q left", k))
			}
			continue
		}
		w, ok := want[k]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("unexpected key %q (%d bytes)", k, len(data)))
		case !bytes.Equal(data, w):
			problems = append(problems, fmt.Sprintf("%q holds %d bytes that differ from the %d expected", k, len(data), len(w)))
		}
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			problems = append(problems, fmt.Sprintf("missing %q", k))
		}
	}
	sort.Strings(problems)
	if len(problems) > 0 {
		t.Errorf("bucket after the offline folder rename:\n  %s", strings.Join(problems, "\n  "))
	}
}

// checkTraffic checks what the mount sent: the uncached file was never
// downloaded (moved server-side), and every PutObject of a file carried
// the whole content that only this machine had: no 0-byte placeholder, no
// upload of a file the store already had. (The files changed offline may
// also go up under their old names, then be deleted: an upload attempted
// before the rename, while the store was down, may have reached it, so the
// journal does not cancel it.)
func (fx offlineRenameFixture) checkTraffic(t *testing.T, g *gatedProxy) {
	t.Helper()
	if n := g.getsOf("dir/big.bin", "newdir/big.bin", "dir/deep/d.txt", "newdir/deep/d.txt", "dir/deep/more/m.txt", "newdir/deep/more/m.txt", "whole/w.txt", "moved/w.txt"); n != 0 {
		t.Errorf("%d GetObject of big.bin or of the files in deep/: uncached files were downloaded, want them moved server-side", n)
	}
	local := map[string]int64{"offline.txt": int64(len("made offline")), "edited.txt": int64(len("edited offline"))}
	for _, p := range g.putsSoFar() {
		if strings.HasSuffix(p.key, "/") || nimbusOwnKey(p.key) {
			continue // folder markers, the attribute index
		}
		dir, name, _ := strings.Cut(p.key, "/")
		if size, ok := local[name]; !ok || (dir != "dir" && dir != "newdir") || p.size != size {
			t.Errorf("PutObject %q of %d bytes: only offline.txt (%d bytes) and edited.txt (%d bytes) have local content",
				p.key, p.size, local["offline.txt"], local["edited.txt"])
		}
	}
}

// TestOfflineFolderRename: with the store down, rename(2) of a folder
// succeeds and is journaled; the mount shows the renamed tree at once; a
// file another client changes during the outage is kept; after reconnect
// the bucket holds the renamed keys, the uncached file moved server-side.
func TestOfflineFolderRename(t *testing.T) {
	e := newEnv(t)
	fx := newOfflineRenameFixture(e)
	g := startGatedProxy(t, e.minio.Endpoint, e.bucket)
	m := e.mount(mountOpt{endpoint: g.url, args: []string{"--dir-ttl", "1s"}})
	fx.cacheOnline(t, m)

	e.minio.Stop()
	fx.changeOffline(t, m)
	fx.renameOffline(t, m)
	fx.checkView(t, m, "offline, right after the rename")

	// MinIO comes back, but not for the mount yet: another client changes
	// a file of the renamed folder under its old name.
	g.down.Store(true)
	e.minio.Restart()
	e.put("dir/changed.txt", []byte("changed remotely"))
	fx.checkView(t, m, "offline, after the remote change")
	g.down.Store(false)

	m.sync(3 * time.Minute)
	fx.checkBucket(t, e, true)
	fx.checkTraffic(t, g)
	var kept bool
	for _, c := range m.status().Conflicts {
		if c.Key == "dir/changed.txt" {
			kept = true
		}
	}
	if !kept {
		t.Errorf("no conflict reported for dir/changed.txt, kept because it changed remotely: %+v", m.status().Conflicts)
	}
	// Online again, the moved files read right, the uncached one too.
	if got := fileSHA(t, m.path("newdir/big.bin")); got != fx.big.sha256() {
		t.Error("newdir/big.bin read after reconnect differs")
	}
	if got, err := os.ReadFile(m.path("newdir/changed.txt")); err != nil || string(got) != "changed remotely" {
		t.Errorf("newdir/changed.txt after sync = %q, %v; want the remote edit it was copied from", got, err)
	}
	fx.checkDeepOnline(t, m)

	// The old name of the folder moved whole is free again: one created
	// there by another client shows at the next listing.
	e.put("whole/again.txt", []byte("a new folder under the old name"))
	deadline := time.Now().Add(time.Minute)
	for {
		got, err := os.ReadFile(m.path("whole/again.txt"))
		if err == nil && string(got) == "a new folder under the old name" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("whole/again.txt, created remotely after the move, does not show: %q, %v", got, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestOfflineFolderRenameSurvivesKill: nimbus is killed right after an
// offline folder rename returned; the remount, still offline, shows the
// renamed tree, and once the store is back everything lands renamed.
func TestOfflineFolderRenameSurvivesKill(t *testing.T) {
	e := newEnv(t)
	fx := newOfflineRenameFixture(e)
	g := startGatedProxy(t, e.minio.Endpoint, e.bucket)
	cacheDir := t.TempDir()
	m := e.mount(mountOpt{endpoint: g.url, cacheDir: cacheDir})
	fx.cacheOnline(t, m)
	// The block cache records what it holds once a second; a clean
	// unmount makes sure the kill below finds the content cached.
	m.unmount()
	m = e.mount(mountOpt{endpoint: g.url, cacheDir: cacheDir})
	fx.browse(t, m)

	e.minio.Stop()
	fx.changeOffline(t, m)
	fx.renameOffline(t, m)
	killNimbus(t, m)
	detachDead(t, m)

	m2 := e.mount(mountOpt{endpoint: g.url, cacheDir: cacheDir})
	fx.checkView(t, m2, "remounted offline after SIGKILL")

	e.minio.Restart()
	m2.sync(3 * time.Minute)
	fx.checkBucket(t, e, false)
	fx.checkTraffic(t, g)
	if got := fileSHA(t, m2.path("newdir/big.bin")); got != fx.big.sha256() {
		t.Error("newdir/big.bin read after reconnect differs")
	}
	fx.checkDeepOnline(t, m2)
}

// checkDeepOnline checks, the store being back and the moves done, that the
// folder moved without ever being listed shows its content under the new
// name.
func (fx offlineRenameFixture) checkDeepOnline(t *testing.T, m *mount) {
	t.Helper()
	for name, want := range map[string]string{"newdir/deep/d.txt": "never listed here", "newdir/deep/more/m.txt": "deeper still"} {
		if got, err := os.ReadFile(m.path(name)); err != nil || string(got) != want {
			t.Errorf("%s after sync = %q, %v; want %q", name, got, err, want)
		}
	}
}
