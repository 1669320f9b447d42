package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// syncInProcess asks the mount to drain its journal over the control
// socket, without starting a process: a fork while the test holds a file of
// another mount open would close that file in the child (at exec), which
// flushes, and so commits, it early.
func syncInProcess(t *testing.T, m *mount, timeout time.Duration) {
	t.Helper()
	buf := make([]byte, 512)
	n, err := unix.Getxattr(m.dir, "user.nimbus.control", buf)
	if err != nil {
		t.Fatalf("control socket of %s: %v", m.dir, err)
	}
	conn, err := net.DialTimeout("unix", string(buf[:n]), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(timeout + 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := json.NewEncoder(conn).Encode(map[string]any{"op": "sync", "timeout": timeout}); err != nil {
		t.Fatal(err)
	}
	var resp struct {
		Error string `json:"error"`
	}
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		t.Fatal(err)
	}
	if resp.Error != "" {
		t.Fatal(fmt.Errorf("sync %s: %s", m.dir, resp.Error))
	}
}

// conflictCopies returns the contents of the conflicted copies of key.
func conflictCopies(objects map[string][]byte, key string) []string {
	ext := path.Ext(key)
	stem := strings.TrimSuffix(key, ext)
	var out []string
	for k, v := range objects {
		if strings.HasPrefix(k, stem+" (conflicted copy ") && strings.HasSuffix(k, ext) {
			out = append(out, string(v))
		}
	}
	return out
}

// openForEdit opens path for writing and writes data, leaving it open: the
// edit is based on the version seen at open.
func openForEdit(t *testing.T, path, data string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte(data)); err != nil {
		t.Fatal(err)
	}
	return f
}

func closeFile(t *testing.T, f *os.File) {
	t.Helper()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestConflictsKeepEveryVersion checks promise 5 with two mounts of one
// bucket (two cache folders, as two machines) and with SDK writes: nothing
// either side wrote is lost, the remote version keeps the name, and the
// local one goes to a conflicted copy listed by nimbus conflicts.
func TestConflictsKeepEveryVersion(t *testing.T) {
	e := newEnv(t)
	e.put("shared.txt", []byte("original"))
	e.put("sdk-edit.txt", []byte("original"))
	e.put("sdk-delete.txt", []byte("original"))
	// In a folder of their own: a conflict elsewhere re-lists the root,
	// which would show the remote edits below before the local delete.
	e.put("solo/edited-remotely.txt", []byte("original"))
	e.put("solo/renamed-remotely-edited.txt", []byte("original"))
	a := e.mount(mountOpt{args: []string{"--dir-ttl", "10m"}})
	b := e.mount(mountOpt{args: []string{"--dir-ttl", "10m"}})
	run(t, time.Minute, "ls", "-lR", a.dir, b.dir) // both know the tree now

	t.Run("BothMountsEditOneFile", func(t *testing.T) {
		fa := openForEdit(t, a.path("shared.txt"), "edit from A")
		fb := openForEdit(t, b.path("shared.txt"), "edit from B")
		closeFile(t, fa)
		syncInProcess(t, a, time.Minute) // fb is open: no fork here
		closeFile(t, fb)
		b.sync(time.Minute)
		objs := e.objects()
		if got := string(objs["shared.txt"]); got != "edit from A" {
			t.Errorf("shared.txt = %q, want A's edit (first uploaded keeps the name)", got)
		}
		if got := conflictCopies(objs, "shared.txt"); len(got) != 1 || got[0] != "edit from B" {
			t.Errorf("conflicted copies of shared.txt = %q, want [B's edit]", got)
		}
		for k := range objs {
			if strings.HasPrefix(k, "shared (conflicted copy ") {
				if s := xattr(t, b.path(k), "user.nimbus.state"); s != "conflict" {
					t.Errorf("state of %s on B = %q, want conflict", k, s)
				}
			}
		}
	})

	t.Run("BothMountsCreateOneName", func(t *testing.T) {
		fa := openForEdit(t, a.path("born-twice.txt"), "born on A")
		fb := openForEdit(t, b.path("born-twice.txt"), "born on B")
		closeFile(t, fa)
		syncInProcess(t, a, time.Minute)
		closeFile(t, fb)
		b.sync(time.Minute)
		objs := e.objects()
		if got := string(objs["born-twice.txt"]); got != "born on A" {
			t.Errorf("born-twice.txt = %q, want A's", got)
		}
		if got := conflictCopies(objs, "born-twice.txt"); len(got) != 1 || got[0] != "born on B" {
			t.Errorf("conflicted copies = %q, want [B's]", got)
		}
	})

	t.Run("RemoteEditWhileLocalEditPending", func(t *testing.T) {
		fa := openForEdit(t, a.path("sdk-edit.txt"), "local edit")
		e.put("sdk-edit.txt", []byte("remote edit"))
		closeFile(t, fa)
		a.sync(time.Minute)
		objs := e.objects()
		if got := string(objs["sdk-edit.txt"]); got != "remote edit" {
			t.Errorf("sdk-edit.txt = %q, want the remote edit to keep the name", got)
		}
		if got := conflictCopies(objs, "sdk-edit.txt"); len(got) != 1 || got[0] != "local edit" {
			t.Errorf("conflicted copies = %q, want [local edit]", got)
		}
	})

	t.Run("RemoteDeleteWhileLocalEditPending", func(t *testing.T) {
		fa := openForEdit(t, a.path("sdk-delete.txt"), "edited while deleted")
		e.delete("sdk-delete.txt")
		closeFile(t, fa)
		a.sync(time.Minute)
		if got := string(e.objects()["sdk-delete.txt"]); got != "edited while deleted" {
			t.Errorf("sdk-delete.txt = %q, want the local edit to re-create it", got)
		}
	})

	t.Run("LocalDeleteOfRemotelyEditedFile", func(t *testing.T) {
		e.put("solo/edited-remotely.txt", []byte("remote edit"))
		if err := os.Remove(a.path("solo/edited-remotely.txt")); err != nil {
			t.Fatal(err)
		}
		a.sync(time.Minute)
		if got := string(e.objects()["solo/edited-remotely.txt"]); got != "remote edit" {
			t.Errorf("edited-remotely.txt = %q, want the remote edit to survive the local delete", got)
		}
	})

	t.Run("LocalRenameOfRemotelyEditedFile", func(t *testing.T) {
		e.put("solo/renamed-remotely-edited.txt", []byte("remote edit"))
		if err := os.Rename(a.path("solo/renamed-remotely-edited.txt"), a.path("solo/rename-target.txt")); err != nil {
			t.Fatal(err)
		}
		a.sync(time.Minute)
		objs := e.objects()
		found := false
		for _, k := range []string{"solo/renamed-remotely-edited.txt", "solo/rename-target.txt"} {
			if string(objs[k]) == "remote edit" {
				found = true
			}
		}
		if !found {
			t.Errorf("the remote edit was lost by a local rename: %q", objs)
		}
	})

	// nimbus conflicts and status list what happened on B and A.
	out := run(t, 10*time.Second, nimbusBin, "conflicts", b.dir)
	if !strings.Contains(string(out), "shared.txt") || !strings.Contains(string(out), "edited on both sides") {
		t.Errorf("nimbus conflicts on B does not list shared.txt:\n%s", out)
	}
	if st := a.status(); len(st.Conflicts) < 2 {
		t.Errorf("status on A lists %d conflicts, want at least 2", len(st.Conflicts))
	}
	// A remote delete made B's view stale; nothing here may make a mount
	// fail: both still list.
	for _, m := range []*mount{a, b} {
		if _, err := os.ReadDir(m.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("listing %s: %v", m.dir, err)
		}
	}
}
