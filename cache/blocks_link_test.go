package cache

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// stageFile writes c's bytes to a file beside the store's folder, as the
// journal stages an upload's content, and returns its path.
func (e *blockEnv) stageFile(c Content) string {
	e.t.Helper()
	path := filepath.Join(filepath.Dir(e.cfg.Dir), "staged-"+c.ETag)
	if err := os.WriteFile(path, want(c, 0, c.Size), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// mustLinkAdopt adopts c from its staged file by a link, and fails the test
// unless it was linked.
func (e *blockEnv) mustLinkAdopt(c Content, staged string) {
	e.t.Helper()
	linked, err := e.s.LinkAdopt(c, staged)
	if err != nil || !linked {
		e.t.Fatalf("LinkAdopt(%q) = %v, %v; want linked", c.Key, linked, err)
	}
}

// checkWhole fails unless r holds exactly c's bytes.
func checkWhole(t *testing.T, what string, r io.ReaderAt, c Content) {
	t.Helper()
	got := make([]byte, c.Size)
	n, err := r.ReadAt(got, 0)
	if err != nil && !(errors.Is(err, io.EOF) && int64(n) == c.Size) {
		t.Fatalf("%s: read %d bytes: %v", what, n, err)
	}
	if !bytes.Equal(got, want(c, 0, c.Size)) {
		t.Fatalf("%s no longer holds the content's bytes (holes punched in a shared file?)", what)
	}
}

// An upload's staged file becomes the cached content itself: the same
// inode, nothing copied, read without a GET, kept across a clean reopen
// and a crash.
func TestLinkAdoptSharesTheStagedFile(t *testing.T) {
	e := newBlockEnv(t, func(c *BlockStoreConfig) { c.ReadAhead = -1 })
	c := e.fake.put("up.bin", 5*testBS+321)
	staged := e.stageFile(c)
	e.mustLinkAdopt(c, staged)

	if got := e.s.CachedBytes(c); got != c.Size {
		t.Fatalf("cached %d bytes after LinkAdopt, want %d", got, c.Size)
	}
	sfi, err := os.Stat(staged)
	if err != nil {
		t.Fatal(err)
	}
	cfi, err := os.Stat(e.s.pathOf(c))
	if err != nil {
		t.Fatalf("no content file after LinkAdopt: %v", err)
	}
	if !os.SameFile(sfi, cfi) {
		t.Fatal("the content file is a copy, not the staged file")
	}
	if err := os.Remove(staged); err != nil { // as the journal does next
		t.Fatal(err)
	}
	e.readOnce(c, 0, c.Size)
	if e.gets() != 0 {
		t.Fatalf("%d GETs reading a linked version, want 0", e.gets())
	}
	if st := e.s.Stats(); st.Used != c.Size || st.FetchedBytes != 0 {
		t.Fatalf("stats %+v: want %d bytes used, none fetched", st, c.Size)
	}

	e.reopen(nil)
	e.readOnce(c, 0, c.Size)
	if err := e.s.flush(false); err != nil {
		t.Fatal(err)
	}
	e.crash()
	e.open()
	e.readOnce(c, 0, c.Size)
	if e.gets() != 0 {
		t.Fatalf("%d GETs after a reopen and a crash, want 0", e.gets())
	}
}

// A shared file is never punched, whoever else reads it: a block evicted
// while the content is open keeps its bytes, an unused content is evicted
// whole (its link removed), and Free drops it the same way.
func TestLinkAdoptedFileIsNeverPunched(t *testing.T) {
	e := newBlockEnv(t, func(c *BlockStoreConfig) { c.Capacity = 6 * testBS; c.ReadAhead = -1 })
	other := e.fake.put("other.bin", 6*testBS)

	// Evicted block by block while a handle is open.
	c := e.fake.put("open.bin", 4*testBS)
	staged := e.stageFile(c)
	e.mustLinkAdopt(c, staged)
	reader, err := os.Open(staged) // a working copy reading it
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	if err := os.Remove(staged); err != nil {
		t.Fatal(err)
	}
	h := e.s.Open(c)
	e.readOnce(other, 0, other.Size) // pushes c's blocks out
	if got := e.s.CachedBytes(c); got == c.Size {
		t.Fatal("nothing of the linked content was evicted: the test proves nothing")
	}
	checkWhole(t, "the staged file, after evictions under an open handle", reader, c)
	e.read(h, c, 0, c.Size) // fetched again into the shared file: the same bytes
	checkWhole(t, "the staged file, after a fetch into it", reader, c)
	h.Close()

	// Free while open, then the content goes once closed.
	h = e.s.Open(c)
	e.s.Free(c.Key)
	checkWhole(t, "the staged file, after Free", reader, c)
	h.Close()
	if _, err := os.Stat(e.s.pathOf(c)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the freed content's link is still there: %v", err)
	}

	// Unused: one block's eviction takes the whole content.
	d := e.fake.put("unused.bin", 4*testBS)
	dstaged := e.stageFile(d)
	e.mustLinkAdopt(d, dstaged)
	dreader, err := os.Open(dstaged)
	if err != nil {
		t.Fatal(err)
	}
	defer dreader.Close()
	e.readOnce(other, 0, 3*testBS)
	if got := e.s.CachedBytes(d); got != 0 {
		t.Fatalf("%d bytes of an unused linked content left after an eviction, want it evicted whole", got)
	}
	if _, err := os.Stat(e.s.pathOf(d)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the evicted content's link is still there: %v", err)
	}
	checkWhole(t, "the staged file, after its content was evicted", dreader, d)
}

// After a crash, a content file that still has a second link (the journal's
// staged file, which it uploads again) is not punched where records are
// missing, nor later in that run, once the journal's name went while a
// working copy made from it still reads the file.
func TestLoadDoesNotPunchASharedFile(t *testing.T) {
	e := newBlockEnv(t, func(c *BlockStoreConfig) { c.Capacity = 6 * testBS; c.ReadAhead = -1 })
	c := e.fake.put("up.bin", 4*testBS)
	staged := e.stageFile(c)
	e.mustLinkAdopt(c, staged)
	if err := e.s.flush(false); err != nil {
		t.Fatal(err)
	}
	h := e.s.Open(c)
	e.readOnce(e.fake.put("other.bin", 3*testBS), 0, 3*testBS) // evicts one of c's blocks, unpunched
	if got := e.s.CachedBytes(c); got == c.Size || got == 0 {
		t.Fatalf("%d of c's %d bytes cached after the eviction, want some: the test proves nothing", got, c.Size)
	}
	if err := e.s.flush(false); err != nil { // the evicted block's record goes
		t.Fatal(err)
	}
	e.crash() // with c open: its file is left with a block no record claims
	_ = h     // died with the store
	e.open()
	reader := readerAt(t, staged) // a working copy made from the staged file
	checkWhole(t, "the journal's staged file, after a crash and an open of the store", reader, c)
	if e.s.CachedBytes(c) == 0 {
		t.Fatal("nothing of c was kept across the crash: the rest proves nothing")
	}

	// The journal's upload lands and its name goes; the working copy
	// still reads the file, which must stay whole through evictions.
	e.dropNameAndEvict(c, staged, "third.bin")
	checkWhole(t, "the staged file, after its name went and the cache evicted", reader, c)
}

// After a clean close too, a content file that still has the journal's
// link (its upload's completion was not recorded before the close) is
// shared for the whole run: a working copy may open the staged name before
// the replayed upload drops it, and keeps reading the file after.
func TestCleanReopenKeepsASharedFileWhole(t *testing.T) {
	e := newBlockEnv(t, func(c *BlockStoreConfig) { c.Capacity = 6 * testBS; c.ReadAhead = -1 })
	c := e.fake.put("up.bin", 4*testBS)
	staged := e.stageFile(c)
	e.mustLinkAdopt(c, staged)
	e.reopen(nil)
	reader := readerAt(t, staged)              // a working copy made from the staged file
	e.dropNameAndEvict(c, staged, "other.bin") // the replayed upload lands
	checkWhole(t, "the staged file, after a clean reopen, its name gone and the cache evicting", reader, c)
}

// dropNameAndEvict removes the staged name of c's file, as the journal does
// once its upload lands, and reads a new content as large as the cache
// while c is open, which evicts c's blocks.
func (e *blockEnv) dropNameAndEvict(c Content, staged, other string) {
	e.t.Helper()
	if err := os.Remove(staged); err != nil {
		e.t.Fatal(err)
	}
	h := e.s.Open(c)
	defer h.Close()
	e.readOnce(e.fake.put(other, 6*testBS), 0, 6*testBS)
	if got := e.s.CachedBytes(c); got == c.Size {
		e.t.Fatalf("all of c's %d bytes still cached: nothing was evicted, the test proves nothing", got)
	}
}

func readerAt(t *testing.T, path string) io.ReaderAt {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// LinkAdopt links only a content the store has nothing of, that fits:
// otherwise it reports false and leaves the copy to StartAdopt.
func TestLinkAdoptDeclines(t *testing.T) {
	e := newBlockEnv(t, func(c *BlockStoreConfig) { c.Capacity = 8 * testBS; c.ReadAhead = -1 })

	part := e.fake.put("part.bin", 4*testBS)
	e.readOnce(part, 0, 10) // one block cached
	if linked, err := e.s.LinkAdopt(part, e.stageFile(part)); linked || err != nil {
		t.Fatalf("LinkAdopt of a partly cached content = %v, %v; want false", linked, err)
	}

	big := e.fake.put("big.bin", 9*testBS)
	if linked, err := e.s.LinkAdopt(big, e.stageFile(big)); linked || err != nil {
		t.Fatalf("LinkAdopt of a content larger than the cache = %v, %v; want false", linked, err)
	}

	open := e.fake.put("open.bin", 2*testBS)
	h := e.s.Open(open)
	if linked, err := e.s.LinkAdopt(open, e.stageFile(open)); linked || err != nil {
		t.Fatalf("LinkAdopt of an open content = %v, %v; want false", linked, err)
	}
	h.Close()
	for _, c := range []Content{big, open} {
		if _, err := os.Stat(e.s.pathOf(c)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a declined LinkAdopt left a content file for %q: %v", c.Key, err)
		}
	}
}

// pathOf is where the store keeps c's content file.
func (s *BlockStore) pathOf(c Content) string {
	return s.newContent(contentIDOf(c.Key, c.ETag), c.Key, c.ETag, c.Size).path
}
