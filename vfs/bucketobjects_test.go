package vfs

import (
	"testing"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/attrindex"
	"github.com/nimbus-fs/nimbus/backend/snapshots"
)

// bucketObjects makes the attribute index and the snapshots of a test
// mount over store, wired as cmd/nimbus wires them: the index is the store
// the vfs lists through and its recorder, and asks *fsys (set once the FS
// exists) what it shows. The caller closes the index after the FS stops.
func bucketObjects(t *testing.T, store backend.Backend, j journalLog, fsys **FS, mountID string) (*attrindex.Index, *snapshots.Store) {
	t.Helper()
	index := attrindex.New(store, attrindex.Config{
		Pending: func(key string) bool {
			_, ok := j.Pending(key)
			return ok
		},
		PendingUnder: func(prefix string) bool { return len(j.PendingUnder(prefix)) > 0 },
		Shown:        func(prefix string) bool { return (*fsys).Shows(prefix) },
		ShownEmpty:   func(prefix string) bool { return (*fsys).ShowsNothingUnder(prefix) },
	})
	snaps, err := snapshots.New(store, snapshots.Config{MountID: mountID, Referenced: func() []string {
		var keys []string
		for _, p := range j.PendingUnder("") {
			if p.Partial != nil {
				keys = append(keys, p.Partial.From)
			}
		}
		return keys
	}})
	if err != nil {
		t.Fatal(err)
	}
	return index, snaps
}

// The packages the mount wires in have what the vfs asks of them.
var (
	_ attrRecorder = (*attrindex.Index)(nil)
	_ snapshotter  = (*snapshots.Store)(nil)
	_ lister       = (*attrindex.Index)(nil)
)
