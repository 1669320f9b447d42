package cache

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// The tree's own database.
//
// The tree is a cache: listings rebuild it, and the journal's Reconcile
// restores the local changes it shows. So its transactions are not synced
// to disk (bbolt's NoSync): a create or a close would otherwise wait for
// two more fdatasyncs each. A process that dies, even by SIGKILL, loses
// nothing: its writes are in the page cache. Only a crash of the whole
// system can leave the file torn, and bbolt cannot be trusted to detect
// that (it panics on a torn page, in goroutines of its own). So a state
// file beside the database, written and synced around each use, records
// the boot the database was opened in and whether it was closed cleanly;
// one left open by an earlier boot is started afresh, before bbolt reads
// it.

// bootIDPath holds an identifier the kernel draws anew at each boot.
var bootIDPath = "/proc/sys/kernel/random/boot_id"

// TreeDB is the tree's database, opened by OpenTreeDB.
type TreeDB struct {
	*bolt.DB
	state string // the state file's path
}

// OpenTreeDB opens (or makes) the tree database at path, starting it afresh
// when the system may have crashed while it was in use.
func OpenTreeDB(path string, log *slog.Logger) (*TreeDB, error) {
	state := path + ".state"
	prev, err := os.ReadFile(state)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tree database state: %w", err)
	}
	boot := bootID()
	if _, statErr := os.Stat(path); statErr == nil && !trusted(string(prev), boot) {
		log.Warn("the system stopped without unmounting: starting the tree afresh (folders are listed again)", "path", path)
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove the tree database: %w", err)
		}
	}
	if err := writeSynced(state, "open "+boot+"\n"); err != nil {
		return nil, fmt.Errorf("tree database state: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, bolterrors.ErrInvalid) || errors.Is(err, bolterrors.ErrChecksum) {
		log.Warn("tree database unreadable: starting it afresh (folders are listed again)", "path", path, "err", err)
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove unreadable tree database: %w", err)
		}
		db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	}
	if err != nil {
		return nil, fmt.Errorf("open tree database %s: %w", path, err)
	}
	db.NoSync = true
	return &TreeDB{DB: db, state: state}, nil
}

// Close syncs and closes the database, and records a clean close.
func (d *TreeDB) Close() error {
	err := d.Sync()
	if cerr := d.DB.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = writeSynced(d.state, "clean\n")
	}
	return err
}

// trusted reports whether a database whose state file says prev may be
// read in boot: it was closed cleanly, or left open in this same boot (by a
// process that died: its writes are in the page cache).
func trusted(prev, boot string) bool {
	prev = strings.TrimSpace(prev)
	return prev == "clean" || (boot != "" && prev == "open "+boot)
}

// writeSynced replaces the file at path with content, synced. It writes a
// temporary file and renames it over path, so that a mount starting while
// the last one closes reads the old state or the new one, never the empty
// file a rewrite in place shows for a moment (which distrusted a cleanly
// closed tree). A state lost by a crash reads as an older or untrusted
// one, and the database is then started afresh.
func writeSynced(path, content string) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(content)
	if err == nil {
		err = f.Sync()
	}
	if err = errors.Join(err, f.Close()); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// bootID identifies the running boot ("" if unknown, which makes every
// unclean open distrusted).
func bootID() string {
	b, err := os.ReadFile(bootIDPath)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// RemoveTree deletes the tree's buckets from db, where versions before the
// tree had its own database kept it.
func RemoveTree(db *bolt.DB) error {
	return db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{treeEntries, treeDirs, treeSkipped} {
			if err := tx.DeleteBucket(name); err != nil && !errors.Is(err, bolterrors.ErrBucketNotFound) {
				return err
			}
		}
		return nil
	})
}
