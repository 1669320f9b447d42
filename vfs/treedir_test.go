package vfs

import (
	"fmt"
	"io"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/integration/wait"
)

// TestTreeDirReadsPageByPage reads a listed folder of three pages and
// more: the entries come from the tree a page at a time, so a file made
// after the first entries were read still shows (a snapshot taken at
// opendir would miss it), every name shows once, and rewinddir starts
// again.
func TestTreeDirReadsPageByPage(t *testing.T) {
	const n = 3*treeDirPage + 7
	objects := make(map[string][]byte, n)
	var want []string
	for i := range n {
		name := fmt.Sprintf("big/f%05d", i)
		objects[name] = nil
		want = append(want, name[len("big/"):])
	}
	m := newTier(t, tierOpt{remote: seededRemote(t, objects)})
	if got := m.names("big"); len(got) != n { // lists it: the next reads come from the tree
		t.Fatalf("first listing: %d names, want %d", len(got), n)
	}
	// That readdir streamed the listing as it arrived, and may return
	// before the listing is recorded; an open meanwhile would stream it
	// too, with the local entries of the moment (as POSIX allows), not
	// read the tree page by page.
	wait.Until(t, 10*time.Second, "the listing of big recorded in the tree", func() bool {
		st, known, err := m.fsys.cfg.Tree.Dir("big")
		return err == nil && known && m.fsys.fresh(st)
	})

	d, err := os.Open(m.path("big"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	first, err := d.Readdirnames(10)
	if err != nil || len(first) != 10 {
		t.Fatalf("first names: %d, %v", len(first), err)
	}
	m.mustWrite("big/zzz-made-while-reading", []byte("new"))
	rest, err := d.Readdirnames(-1)
	if err != nil {
		t.Fatal(err)
	}
	got := append(first, rest...)
	slices.Sort(got)
	if want := append(slices.Clone(want), "zzz-made-while-reading"); !slices.Equal(got, want) {
		t.Fatalf("read %d names (%q … %q), want the %d listed and the new file, each once", len(got), got[:3], got[len(got)-3:], len(want))
	}

	if _, err := d.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	again, err := d.Readdirnames(-1)
	if err != nil || len(again) != n+1 {
		t.Fatalf("after rewinddir: %d names (%v), want %d", len(again), err, n+1)
	}
}
