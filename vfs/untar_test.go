package vfs

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
)

// TestFolderMadeAsTarDoesIsOneMarker: tar makes a folder, fills it, then
// sets its times and mode as it leaves it. Those three changes wait in the
// journal as one marker upload, and after sync the marker and the parent's
// attribute index carry the last of them.
func TestFolderMadeAsTarDoesIsOneMarker(t *testing.T) {
	m := newTier(t, tierOpt{holdUploads: true})
	d := m.path("d")
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	m.mustWrite("d/f", []byte("content"))
	old := time.Unix(1200000000, 0)
	if err := os.Chtimes(d, old, old); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	// Pending: the marker of d/ and the file d/f.
	if s := m.jour.Stats(); s.Pending != 2 {
		t.Fatalf("%d changes pending after mkdir, a create, chtimes and chmod, want 2 (one marker, one file): %+v",
			s.Pending, m.jour.PendingUnder(""))
	}
	m.startUploads()
	m.sync(30 * time.Second)

	wantMode := strconv.FormatUint(syscall.S_IFDIR|0o755, 8)
	wantMTime := strconv.FormatInt(old.UnixNano(), 10)
	_, info, err := m.object("d/")
	if err != nil {
		t.Fatal(err)
	}
	if info.Meta[metaMode] != wantMode || info.Meta[metaMTime] != wantMTime {
		t.Errorf("stored marker metadata = %v, want mode %s and mtime %s", info.Meta, wantMode, wantMTime)
	}
	data, _, err := m.object(attrIndexName)
	if err != nil {
		t.Fatalf("the root's attribute index: %v", err)
	}
	var doc struct {
		Files map[string]indexRecord `json:"files"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	if rec := doc.Files["d"]; rec.Mode != syscall.S_IFDIR|0o755 || rec.MTime != old.UnixNano() {
		t.Errorf("the root's index has d as %+v, want mode %o and mtime %d", rec, syscall.S_IFDIR|0o755, old.UnixNano())
	}
}

// TestRemovedFolderLeavesNoSidecar: a folder made and removed (renamed
// away, or emptied and rmdir'ed) before its marker was uploaded leaves
// nothing in the store, although its attribute index was written
// meanwhile (the record of its subfolder, made when a file was created
// there): the journal cancels the marker's Delete and reports nothing,
// so the vfs tells the index when it journals the removal.
func TestRemovedFolderLeavesNoSidecar(t *testing.T) {
	for _, remove := range []string{"rename", "rmdir"} {
		t.Run(remove, func(t *testing.T) {
			m := newTier(t, tierOpt{holdUploads: true})
			for _, d := range []string{"d", "d/s"} {
				if err := os.Mkdir(m.path(d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			m.mustWrite("d/s/f", []byte("content"))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := m.fsys.FlushAttrs(ctx); err != nil {
				t.Fatal(err)
			}
			if _, _, err := m.object("d/" + attrIndexName); err != nil {
				t.Fatalf("d's attribute index was not written while the markers waited: %v", err)
			}
			switch remove {
			case "rename":
				if err := os.Rename(m.path("d"), m.path("e")); err != nil {
					t.Fatal(err)
				}
			case "rmdir":
				for _, p := range []string{"d/s/f", "d/s", "d"} {
					if err := os.Remove(m.path(p)); err != nil {
						t.Fatal(err)
					}
				}
			}
			m.startUploads()
			m.sync(30 * time.Second)
			var left []string
			err := m.store.ListFlat(ctx, "d/", func(p backend.Page) error {
				for _, o := range p.Objects {
					left = append(left, o.Key)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(left) != 0 {
				t.Errorf("the store keeps %q under the removed folder d/", left)
			}
		})
	}
}
