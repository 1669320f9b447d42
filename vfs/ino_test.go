package vfs

import (
	"bytes"
	"encoding/binary"
	"os"
	"syscall"
	"testing"
)

// TestTierInodeNumbersStable: a file's and a folder's inode numbers stay
// the same when the kernel forgets their inodes and looks them up again
// (drop_caches), and match what readdir reports; tar checks a folder's
// inode number before it sets the folder's times at the end of an
// extraction, and fails when it changed. A renamed node keeps its number,
// and a new file at its old path gets another.
func TestTierInodeNumbersStable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to drop the kernel's caches")
	}
	m := newTier(t, tierOpt{})
	if err := os.MkdirAll(m.path("d/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	m.mustWrite("d/f", []byte("x"))
	ino := func(rel string) uint64 {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Lstat(m.path(rel), &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	before := map[string]uint64{"d": ino("d"), "d/sub": ino("d/sub"), "d/f": ino("d/f")}
	m.sync(tierSync)
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2\n"), 0); err != nil {
		t.Fatal(err)
	}
	for rel, want := range before {
		if got := ino(rel); got != want {
			t.Errorf("%s: inode %d after the kernel forgot it, was %d", rel, got, want)
		}
	}
	for name, want := range direntInos(t, m.path("d")) {
		if got := ino("d/" + name); got != want {
			t.Errorf("d/%s: lstat's inode %d, readdir's %d", name, got, want)
		}
	}

	// A node keeps its number when renamed: a new file at its old path
	// must not get the same one while the renamed one lives.
	f, err := os.Open(m.path("d/f")) // keeps the node live
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Rename(m.path("d/f"), m.path("d/g")); err != nil {
		t.Fatal(err)
	}
	if got := ino("d/g"); got != before["d/f"] {
		t.Errorf("rename changed the inode number: %d, was %d", got, before["d/f"])
	}
	m.mustWrite("d/f", []byte("another file"))
	if ino("d/f") == ino("d/g") {
		t.Errorf("a new d/f shares inode %d with the renamed d/g", ino("d/g"))
	}
	for name, want := range direntInos(t, m.path("d")) {
		if got := ino("d/" + name); got != want {
			t.Errorf("after the rename, d/%s: lstat's inode %d, readdir's %d", name, got, want)
		}
	}
}

// direntInos returns the inode numbers readdir (getdents64) reports in
// dir, by name.
func direntInos(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	inos := map[string]uint64{}
	buf := make([]byte, 64<<10)
	for {
		n, err := syscall.Getdents(fd, buf)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return inos
		}
		for off := 0; off < n; {
			// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
			rec := buf[off:]
			ino := binary.NativeEndian.Uint64(rec[0:8])
			reclen := int(binary.NativeEndian.Uint16(rec[16:18]))
			name := string(bytes.TrimRight(rec[19:reclen], "\x00"))
			if name != "." && name != ".." {
				inos[name] = ino
			}
			off += reclen
		}
	}
}
