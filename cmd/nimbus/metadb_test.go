package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestMetaDBSkipsTheFreelist checks that the cache database, opened as a
// mount opens it, does not write its freelist at each commit, even once the
// journal's inline contents have come and gone, and that it opens again
// with every record intact (the freelist is rebuilt then).
func TestMetaDBSkipsTheFreelist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	db, err := bolt.Open(path, 0o600, metaDBOptions)
	if err != nil {
		t.Fatal(err)
	}
	bucket := []byte("records")
	content := bytes.Repeat([]byte("x"), 20<<10) // an inline file's content
	// Churn as an untar does: records with content written, then removed
	// once uploaded, leaving many free pages.
	for round := range 20 {
		err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(bucket)
			if err != nil {
				return err
			}
			for i := range 50 {
				if err := b.Put(fmt.Appendf(nil, "r%02d-%02d", round, i), content); err != nil {
					return err
				}
			}
			if round == 0 {
				return nil
			}
			for i := range 50 {
				if err := b.Delete(fmt.Appendf(nil, "r%02d-%02d", round-1, i)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte("last"), []byte("1")) }); err != nil {
		t.Fatal(err)
	}
	free := db.Stats().FreePageN
	pageSize := db.Info().PageSize
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if free < 100 {
		t.Fatalf("only %d free pages after the churn: the test does not exercise a long freelist", free)
	}
	if got := currentMetaFreelist(t, path, pageSize); got != noFreelist {
		t.Fatalf("the last commit wrote the freelist at page %d (%d free pages); want none written", got, free)
	}

	db, err = bolt.Open(path, 0o600, metaDBOptions)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if got := b.Get([]byte("last")); string(got) != "1" {
			return fmt.Errorf("last = %q, want 1", got)
		}
		for i := range 50 {
			if got := b.Get(fmt.Appendf(nil, "r19-%02d", i)); !bytes.Equal(got, content) {
				return fmt.Errorf("r19-%02d: %d bytes, want the %d written", i, len(got), len(content))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte("after"), content) }); err != nil {
		t.Fatalf("write after reopen: %v", err)
	}
}

// noFreelist is the freelist page of a bbolt meta page whose commit did not
// write one.
const noFreelist = ^uint64(0)

// currentMetaFreelist reads the freelist page id of the newer of the two
// meta pages at the start of a closed bbolt file.
func currentMetaFreelist(t *testing.T, path string, pageSize int) uint64 {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) < 2*pageSize {
		t.Fatalf("%s: %d bytes, shorter than its two meta pages", path, len(raw))
	}
	// A meta page: a 16-byte page header, then magic, version, page size
	// and flags (4 bytes each), the root bucket (16), then freelist, pgid
	// and txid (8 each).
	var freelist, txid uint64
	for i := range 2 {
		meta := raw[i*pageSize:]
		if binary.LittleEndian.Uint32(meta[16:]) != 0xED0CDAED {
			t.Fatalf("meta page %d: bad magic", i)
		}
		if id := binary.LittleEndian.Uint64(meta[64:]); i == 0 || id > txid {
			freelist, txid = binary.LittleEndian.Uint64(meta[48:]), id
		}
	}
	return freelist
}
