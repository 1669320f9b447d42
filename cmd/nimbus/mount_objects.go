package main

import (
	"context"
	"log/slog"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/attrindex"
	"github.com/nimbus-fs/nimbus/backend/snapshots"
	"github.com/nimbus-fs/nimbus/journal"
	"github.com/nimbus-fs/nimbus/vfs"
)

// bucketObjects are nimbus's own objects in the bucket that a mount keeps
// beside the user's: the attribute index, whose decorator is the store the
// vfs lists through, and on a mount that writes the snapshots of partial
// edits. (The trash is package trash, run by serve.)
type bucketObjects struct {
	index *attrindex.Index
	snaps *snapshots.Store // nil: a read-only mount
}

// openBucketObjects makes them for a mount of store with options o. The
// index asks *fsys, once it exists, what the mount shows.
func openBucketObjects(store backend.Backend, o mountOptions, j *journal.Journal, mountID string, online func() bool, fsys **vfs.FS, log *slog.Logger) (bucketObjects, error) {
	prefix := o.remote.prefix
	b := bucketObjects{index: attrindex.New(store, attrindex.Config{
		Logger: log,
		Root:   prefix,
		Online: online,
		Pending: func(key string) bool {
			_, ok := j.Pending(key)
			return ok
		},
		PendingUnder: func(p string) bool { return len(j.PendingUnder(p)) > 0 },
		Shown:        func(p string) bool { return (*fsys).Shows(p) },
		ShownEmpty:   func(p string) bool { return (*fsys).ShowsNothingUnder(p) },
	})}
	if o.readOnly {
		return b, nil
	}
	snaps, err := snapshots.New(store, snapshots.Config{Root: prefix, MountID: mountID, Logger: log,
		Referenced: func() []string {
			var keys []string
			for _, p := range j.PendingUnder(prefix) {
				if p.Partial != nil {
					keys = append(keys, p.Partial.From)
				}
			}
			return keys
		}})
	if err != nil {
		return b, err
	}
	b.snaps = snaps
	return b, nil
}

// configure gives cfg the store to list through and the capabilities the
// mount has: a read-only mount (--read-only, --at) reads the attribute
// index in listings, but records nothing and makes no snapshots.
func (b bucketObjects) configure(cfg *vfs.Config) {
	cfg.Store = b.index
	if b.snaps == nil {
		cfg.Attrs, cfg.Snapshots = nil, nil
		return
	}
	cfg.Attrs, cfg.Snapshots = b.index, b.snaps
}

// keepSweeping deletes unused snapshots until ctx ends; done is closed
// then.
func (b bucketObjects) keepSweeping(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	if b.snaps != nil {
		b.snaps.KeepSweeping(ctx)
	}
}

// sweepFinal deletes the snapshots no pending upload needs, at unmount,
// when no file is open any more.
func (b bucketObjects) sweepFinal(ctx context.Context) error {
	if b.snaps == nil {
		return nil
	}
	return b.snaps.SweepFinal(ctx)
}
