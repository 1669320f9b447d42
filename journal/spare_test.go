package journal

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/integration/wait"
)

// StagingFile hands out files made ahead in the background; Close removes
// the ones left, and Open removes those a crash left.
func TestStagingFileHandsOutSpares(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop", func(c *Config) { c.SpareFiles = 3 })
	first, err := m.j.StagingFile()
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	var spares []string
	wait.Until(t, 10*time.Second, "3 spares made", func() bool {
		spares = slices.DeleteFunc(m.stagedFiles(), func(n string) bool { return n == filepath.Base(first.Name()) })
		return len(spares) == 3
	})
	second, err := m.j.StagingFile()
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if !slices.Contains(spares, filepath.Base(second.Name())) {
		t.Errorf("StagingFile made %s, want one of the spares %v", second.Name(), spares)
	}
	if fi, err := second.Stat(); err != nil || fi.Size() != 0 {
		t.Errorf("spare: %v, %v; want an empty file", fi, err)
	}
	// A spare is a working file like any other: written, committed,
	// uploaded.
	if _, err := second.WriteString("from a spare"); err != nil {
		t.Fatal(err)
	}
	m.commit(Op{Kind: PutFile, Key: "s.txt", Staged: second.Name()})
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"s.txt": "from a spare"})
	wait.Until(t, 10*time.Second, "refilled", func() bool { return len(m.stagedFiles()) == 4 }) // first + 3

	// A crash leaves the spares: the next Open removes them, and only
	// them (first is not committed either: garbage too).
	m.kill()
	m.open(func(c *Config) { c.SpareFiles = -1 })
	if left := m.stagedFiles(); len(left) != 0 {
		t.Errorf("after a crash and Open: %v left", left)
	}

	// Close removes the spares of a journal that made some.
	m.kill()
	m.open(func(c *Config) { c.SpareFiles = 2 })
	kept, err := m.j.StagingFile()
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	wait.Until(t, 10*time.Second, "2 spares made", func() bool { return len(m.stagedFiles()) == 3 })
	if err := m.j.Close(); err != nil {
		t.Fatal(err)
	}
	if left := m.stagedFiles(); !slices.Equal(left, []string{filepath.Base(kept.Name())}) {
		t.Errorf("after Close: %v, want only %s (handed out)", left, filepath.Base(kept.Name()))
	}
	if _, err := os.Stat(kept.Name()); err != nil {
		t.Errorf("a file handed out was removed: %v", err)
	}
}
