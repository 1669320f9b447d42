package vfs

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/integration/wait"
)

// A write through a descriptor opened before another client replaced the
// file edits the version that was opened: the write succeeds, the upload's
// condition fails, and the edit is kept as a conflicted copy while the
// other client's version keeps the name. Small and large (a partial edit,
// from a server-side snapshot), cached and not.
func TestWriteAfterRemoteReplaceEditsTheOpenedVersion(t *testing.T) {
	for _, tc := range []struct {
		name   string
		size   int
		cached bool
	}{
		{"small uncached", 100 << 10, false},
		{"small cached", 100 << 10, true},
		{"large uncached", 33 << 20, false},
		{"large cached", 33 << 20, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newTier(t, tierOpt{cacheSize: 128 << 20})
			ctx := context.Background()
			v1 := bytes.Repeat([]byte("1234567"), tc.size/7)
			v2 := []byte("the other client's version")
			if _, err := m.store.Put(ctx, "f", bytes.NewReader(v1), int64(len(v1)), nil, backend.Cond{}); err != nil {
				t.Fatal(err)
			}
			if tc.cached {
				if got := m.mustRead("f"); !bytes.Equal(got, v1) {
					t.Fatalf("read before the edit: %d bytes, want %d", len(got), len(v1))
				}
			}
			f, err := os.OpenFile(m.path("f"), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := m.store.Put(ctx, "f", bytes.NewReader(v2), int64(len(v2)), nil, backend.Cond{}); err != nil {
				t.Fatal(err)
			}
			edit := []byte("LOCAL EDIT")
			off := int64(len(v1) / 2)
			if _, err := f.WriteAt(edit, off); err != nil {
				t.Fatalf("write after the remote replaced the file: %v", err)
			}
			if err := f.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			m.sync(tierSync)
			m.wantRemote("f", v2)
			want := append([]byte(nil), v1...)
			copy(want[off:], edit)
			var copies []string
			for _, k := range m.remoteKeys() {
				if strings.Contains(k, "conflicted copy") {
					copies = append(copies, k)
				}
			}
			if len(copies) != 1 {
				t.Fatalf("conflicted copies %q, want one; keys %q", copies, m.remoteKeys())
			}
			m.wantRemote(copies[0], want)
		})
	}
}

// An open with write access that never writes leaves nothing behind:
// a later change by another client is read by the next open, not the
// version the writer's open kept.
func TestUnusedWritableOpenDoesNotPinTheVersion(t *testing.T) {
	m := newTier(t, tierOpt{dirTTL: 1})
	ctx := context.Background()
	if _, err := m.store.Put(ctx, "f", strings.NewReader("one"), 3, nil, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(m.path("f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// The kernel releases the handle after close returns: its unused copy
	// goes then. (A read before that reads the copy.)
	wait.Until(t, 10*time.Second, "the writable handle's release", func() bool {
		n := m.fsys.liveFile("f")
		if n == nil {
			return true
		}
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.writers == 0 && n.work == nil
	})
	if _, err := m.store.Put(ctx, "f", strings.NewReader("two!"), 4, nil, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
	if got := string(m.mustRead("f")); got != "two!" {
		t.Fatalf("read after an unused writable open and a remote change: %q, want %q", got, "two!")
	}
	m.sync(tierSync)
	if keys := m.remoteKeys(); len(keys) != 1 || keys[0] != "f" {
		t.Fatalf("store keys %q, want only f", keys)
	}
}
