package vfs

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/cache"
)

// TestListStreamReleasesWhatNothingLaterChanges feeds a listing page by
// page: a folder is released at once, a file is held until the listing
// passes the folder that could shadow it, and a shadowed file is never
// released.
func TestListStreamReleasesWhatNothingLaterChanges(t *testing.T) {
	ctx := context.Background()
	s := newListStream("d/")
	released := func() []string {
		var names []string
		for i := 0; ; i++ {
			s.mu.Lock()
			n := len(s.entries)
			s.mu.Unlock()
			if i == n {
				return names
			}
			e, _, _ := s.wait(ctx, i)
			if e.Dir {
				e.Name += "/"
			}
			names = append(names, e.Name)
		}
	}
	obj := func(names ...string) (out []backend.ObjectInfo) {
		for _, n := range names {
			out = append(out, backend.ObjectInfo{Key: "d/" + n, Size: 1, ETag: "e-" + n})
		}
		return out
	}
	s.add(backend.Page{Objects: obj("!early"), Prefixes: []string{"d/!dir/"}})
	if got := released(); !slices.Equal(got, []string{"!dir/"}) {
		t.Fatalf("after page 1: released %q, want [!dir/] (!early held: !early/ may follow)", got)
	}
	s.add(backend.Page{Objects: obj("a", "x")})
	if got := released(); !slices.Equal(got, []string{"!dir/", "!early", "a"}) {
		t.Fatalf("after page 2: released %q, want [!dir/ !early a] (x held: x/ may follow)", got)
	}
	s.add(backend.Page{Prefixes: []string{"d/x/"}, Objects: obj("y")})
	if got := released(); !slices.Equal(got, []string{"!dir/", "!early", "a", "x/"}) {
		t.Fatalf("after page 3: released %q, want [!dir/ !early a x/] (file x shadowed, y held)", got)
	}
	if _, ok := s.lookup("y"); ok {
		t.Fatal("lookup found y before it was released")
	}
	s.end(nil)
	if got := released(); !slices.Equal(got, []string{"!dir/", "!early", "a", "x/", "y"}) {
		t.Fatalf("at the end: released %q, want [!dir/ !early a x/ y]", got)
	}
	if e, ok := s.lookup("x"); !ok || !e.Dir {
		t.Fatalf("lookup x = %+v, %v; want the folder", e, ok)
	}
	if _, ok, err := s.wait(ctx, 5); ok || err != nil {
		t.Fatalf("wait past the end: ok %v, err %v; want the end of a complete listing", ok, err)
	}
	entries, skipped := s.listing()
	if len(entries) != 5 || len(skipped) != 1 || skipped[0].Key != "d/x" {
		t.Fatalf("whole listing: %d entries, skipped %+v; want 5, and d/x shadowed by d/x/", len(entries), skipped)
	}
}

// pagedRemote is a store folder holding big/ with n files (f0000…) and a
// subfolder, listed in pages of 1,000.
func pagedRemote(t *testing.T, n int) (remote string, want []string) {
	t.Helper()
	objects := map[string][]byte{"big/sub/x": []byte("x")}
	for i := range n {
		name := fmt.Sprintf("f%04d", i)
		objects["big/"+name] = []byte(name)
		want = append(want, name)
	}
	return seededRemote(t, objects), append(want, "sub/")
}

// pageGate blocks the last page of big/'s listing while it is armed, until
// released.
type pageGate struct {
	mu      sync.Mutex
	armed   bool          // GUARDED_BY(mu)
	reached chan struct{} // closed when the listing waits at the gate
	open    chan struct{} // closed to let it through
}

// newPageGate returns a gate that opens at the latest when the test ends
// (before the unmount, which a reader stuck at the gate would block), so
// that a failed test does not hang. Call it after newTier: cleanups run
// last-in first-out.
func newPageGate(t *testing.T) *pageGate {
	g := &pageGate{reached: make(chan struct{}), open: make(chan struct{})}
	t.Cleanup(g.release)
	return g
}

// release lets the held page through (once).
func (g *pageGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
	default:
		close(g.open)
	}
}

func (g *pageGate) arm() { g.mu.Lock(); g.armed = true; g.mu.Unlock() }

func (g *pageGate) hook(last int) func(prefix string, page int) {
	return func(prefix string, page int) {
		g.mu.Lock()
		armed := g.armed && prefix == "big/" && page == last
		if armed {
			g.armed = false // once
		}
		g.mu.Unlock()
		if armed {
			close(g.reached)
			<-g.open
		}
	}
}

// gateHook is a tierOpt.beforeListPage that holds page last of big/ at the
// gate in gates, once there is one.
func gateHook(gates *atomic.Pointer[pageGate], last int) func(prefix string, page int) {
	return func(prefix string, page int) {
		if g := gates.Load(); g != nil {
			g.hook(last)(prefix, page)
		}
	}
}

// within runs fn and fails the test if it does not return within d; it
// then calls unblock and waits for fn before failing, so that fn is not
// left running on files the test closes.
func within[T any](t *testing.T, d time.Duration, what string, unblock func(), fn func() T) T {
	t.Helper()
	got := make(chan T, 1)
	go func() { got <- fn() }()
	select {
	case v := <-got:
		return v
	case <-time.After(d):
		unblock()
		<-got
		t.Fatalf("%s: still waiting after %v", what, d)
		panic("unreachable")
	}
}

// readNames reads n entries of an open folder (n <= 0: the rest), folders
// with a trailing slash.
func readNames(d *os.File, n int) ([]string, error) {
	ents, err := d.ReadDir(n)
	var names []string
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() {
			name += "/"
		}
		names = append(names, name)
	}
	return names, err
}

// TestTierReaddirStreamsColdListing reads a cold folder of three listing
// pages while the last page is held back: the first entries arrive, a
// listed file shows the mode its folder's sidecar gives it, and once the
// page comes the folder reads complete and exact, with a name of the last
// page looked up meanwhile found.
func TestTierReaddirStreamsColdListing(t *testing.T) {
	remote, want := pagedRemote(t, 2500)
	// A first mount gives f0001 a mode, which the sidecar records.
	first := newTier(t, tierOpt{remote: remote})
	if err := os.Chmod(first.path("big/f0001"), 0o600); err != nil {
		t.Fatal(err)
	}
	first.sync(tierSync)

	var gates atomic.Pointer[pageGate] // the hook runs in the mount's goroutines
	m := newTier(t, tierOpt{remote: remote, beforeListPage: gateHook(&gates, 2)})
	gate := newPageGate(t)
	gates.Store(gate)
	gate.arm()
	d, err := os.Open(m.path("big"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	type batch struct {
		names []string
		err   error
	}
	start := time.Now()
	b := within(t, 20*time.Second, "first entries while the last page is held", gate.release, func() batch {
		names, err := readNames(d, 100)
		return batch{names, err}
	})
	if b.err != nil || len(b.names) != 100 {
		t.Fatalf("first read: %d names, %v; want 100", len(b.names), b.err)
	}
	// The gate holds the last page until released below: the entries
	// read came before it. It must be this listing's.
	select {
	case <-gate.reached:
	case <-time.After(20 * time.Second):
		t.Fatal("the listing never reached its last page")
	}
	t.Logf("first 100 entries after %v, last page held", time.Since(start))
	st := within(t, 20*time.Second, "lstat of a listed file while the last page is held", gate.release, func() error {
		st, err := os.Lstat(m.path("big/f0001"))
		if err == nil && st.Mode().Perm() != 0o600 {
			return fmt.Errorf("mode %v, want 0600 from the sidecar", st.Mode())
		}
		return err
	})
	if st != nil {
		t.Fatalf("big/f0001: %v", st)
	}
	late := make(chan error, 1)
	go func() {
		_, err := os.Lstat(m.path("big/f2400"))
		late <- err
	}()
	gate.release()
	rest, err := readNames(d, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-late; err != nil {
		t.Fatalf("lookup of a name on the held page: %v", err)
	}
	wantExact(t, append(b.names, rest...), want)
}

// TestTierReaddirStreamsRelistingWithLocalChanges re-lists a folder whose
// listing expired while it has local changes not yet uploaded, holding the
// last page back: the first entries arrive, and the whole read shows the
// new file, hides the deleted one and shows each name once.
func TestTierReaddirStreamsRelistingWithLocalChanges(t *testing.T) {
	remote, want := pagedRemote(t, 2500)
	const ttl = 2 * time.Second
	var gates atomic.Pointer[pageGate] // the hook runs in the mount's goroutines
	m := newTier(t, tierOpt{remote: remote, holdUploads: true, dirTTL: ttl, beforeListPage: gateHook(&gates, 2)})
	gate := newPageGate(t)
	gates.Store(gate)
	m.names("big")
	m.mustWrite("big/new.txt", []byte("new"))
	m.mustWrite("big/f0007", []byte("edited"))
	if err := os.Remove(m.path("big/f0005")); err != nil {
		t.Fatal(err)
	}
	want = slices.DeleteFunc(want, func(n string) bool { return n == "f0005" })
	want = append(want, "new.txt")

	time.Sleep(ttl) // the listing expires
	gate.arm()
	d, err := os.Open(m.path("big"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	type batch struct {
		names []string
		err   error
	}
	b := within(t, 20*time.Second, "first entries while the last page is held", gate.release, func() batch {
		names, err := readNames(d, 100)
		return batch{names, err}
	})
	if b.err != nil || len(b.names) != 100 {
		t.Fatalf("first read: %d names, %v; want 100", len(b.names), b.err)
	}
	// The gate holds the last page until released below: the entries
	// read came before it. It must be this listing's.
	select {
	case <-gate.reached:
	case <-time.After(20 * time.Second):
		t.Fatal("the re-listing never reached its last page")
	}
	gate.release()
	rest, err := readNames(d, 0)
	if err != nil {
		t.Fatal(err)
	}
	wantExact(t, append(b.names, rest...), want)
	if got := string(m.mustRead("big/f0007")); got != "edited" {
		t.Fatalf("big/f0007 reads %q, want the local edit", got)
	}
}

// wantExact requires got to hold each name of want once, and nothing else.
func wantExact(t *testing.T, got, want []string) {
	t.Helper()
	seen := make(map[string]int)
	for _, n := range got {
		seen[n]++
		if seen[n] == 2 {
			t.Errorf("%q shown twice", n)
		}
	}
	for _, n := range want {
		if seen[n] == 0 {
			t.Errorf("%q missing", n)
		}
	}
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Fatalf("read %d names, want %d", len(got), len(want))
	}
}

// TestStreamedLookupAnswersReleasedNames looks names up in a folder whose
// re-listing is in flight: a released name is answered at once, with the
// attributes the tree knows of the same version (as ReplaceDir will record
// it) and not of another; a local change wins over the listing; a name not
// released yet is left to the slow path.
func TestStreamedLookupAnswersReleasedNames(t *testing.T) {
	tree := newTestTree(t)
	f := mustNew(t, Config{Tree: tree, Journal: &fakeJournal{}})
	defer f.Stop()
	known := []cache.Entry{
		{Name: "same", Size: 1, ETag: "e1", Attrs: true, Mode: syscall.S_IFREG | 0o600},
		{Name: "changed", Size: 1, ETag: "old", Attrs: true, Mode: syscall.S_IFREG | 0o600},
	}
	if err := tree.ReplaceDir("d", known, "d/", nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := tree.PutEntry("d", cache.Entry{Name: "edited", Size: 7, Local: true}); err != nil {
		t.Fatal(err)
	}
	s := newListStream("d/")
	f.listMu.Lock()
	f.listing["d"] = &listFlight{done: make(chan struct{}), stream: s}
	f.listMu.Unlock()
	s.add(backend.Page{Objects: []backend.ObjectInfo{
		{Key: "d/changed", Size: 2, ETag: "new"}, {Key: "d/edited", Size: 1, ETag: "e3"}, {Key: "d/same", Size: 1, ETag: "e1"}, {Key: "d/zz", Size: 1, ETag: "e4"},
	}, Prefixes: []string{"d/zz0/"}})

	if e, ok, handled := f.streamedEntry("d", "same"); !handled || !ok || e.Mode != syscall.S_IFREG|0o600 {
		t.Errorf("same: %+v found %v handled %v; want answered with mode 0600 kept", e, ok, handled)
	}
	if e, ok, handled := f.streamedEntry("d", "changed"); !handled || !ok || e.Attrs || e.Size != 2 {
		t.Errorf("changed: %+v found %v handled %v; want answered as listed, without the old version's attributes", e, ok, handled)
	}
	if e, ok, handled := f.streamedEntry("d", "edited"); !handled || !ok || e.Size != 7 {
		t.Errorf("edited: %+v found %v handled %v; want the local change", e, ok, handled)
	}
	if _, _, handled := f.streamedEntry("d", "zz"); !handled {
		t.Error("zz (released once zz0/ passed zz/) was not answered from the stream")
	}
	if _, _, handled := f.streamedEntry("d", "later"); handled {
		t.Error("a name not released yet was answered from the stream")
	}
	f.listMu.Lock()
	delete(f.listing, "d")
	f.listMu.Unlock()
}
