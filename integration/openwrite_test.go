package integration

import (
	"bytes"
	"os"
	"testing"
	"time"
)

// TestWriteAfterRemoteReplaceKeepsBoth (issue 11, point 1): a file is
// opened read-write, another client replaces it, and only then is the open
// descriptor written. The write succeeds and edits the version that was
// opened; at upload the condition fails, so the edit becomes a conflicted
// copy, byte for byte, and the other client's version keeps the name.
// Small and large (at least --partial-edit-min, edited from a server-side
// snapshot), cached and not.
func TestWriteAfterRemoteReplaceKeepsBoth(t *testing.T) {
	e := newEnv(t)
	small := bytes.Repeat([]byte("small v1 "), 100<<10/9)
	large := bytes.Repeat([]byte("large v1 "), 9<<20/9)
	cases := []struct {
		key    string
		v1     []byte
		cached bool
	}{
		{"small-uncached.txt", small, false},
		{"small-cached.txt", small, true},
		{"large-uncached.bin", large, false},
		{"large-cached.bin", large, true},
	}
	for _, c := range cases {
		e.put(c.key, c.v1)
	}
	m := e.mount(mountOpt{args: []string{"--dir-ttl", "10m", "--partial-edit-min", "8MiB"}})
	for _, c := range cases {
		if !c.cached {
			continue
		}
		if got, err := os.ReadFile(m.path(c.key)); err != nil || !bytes.Equal(got, c.v1) {
			t.Fatalf("read %s before the edit: %d bytes, %v", c.key, len(got), err)
		}
	}
	edit := []byte("<<LOCAL EDIT>>")
	for _, c := range cases {
		f, err := os.OpenFile(m.path(c.key), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		e.put(c.key, []byte("replaced by another client: "+c.key))
		if _, err := f.WriteAt(edit, int64(len(c.v1)/2)); err != nil {
			f.Close()
			t.Fatalf("%s: write after the remote replaced it: %v", c.key, err)
		}
		if err := f.Close(); err != nil {
			t.Fatalf("%s: close: %v", c.key, err)
		}
	}
	syncInProcess(t, m, 2*time.Minute)
	objs := e.objects()
	for _, c := range cases {
		if got, want := string(objs[c.key]), "replaced by another client: "+c.key; got != want {
			t.Errorf("%s = %q, want the other client's version", c.key, got)
		}
		want := append([]byte(nil), c.v1...)
		copy(want[len(c.v1)/2:], edit)
		copies := conflictCopies(objs, c.key)
		if len(copies) != 1 || copies[0] != string(want) {
			t.Errorf("%s: %d conflicted copies, want one holding the local edit of the opened version", c.key, len(copies))
		}
	}
}
