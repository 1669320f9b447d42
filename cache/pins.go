package cache

import (
	"bytes"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// pinsBucket holds the pinned paths (relative to the mount root, "" = the
// whole mount) as keys with empty values. Only this file touches it.
var pinsBucket = []byte("pins")

// Pins is the persisted set of pinned paths. A path is pinned when it or
// one of its ancestors is in the set: pins are inherited, as in Nextcloud
// and Windows Cloud Files.
type Pins struct {
	db *bolt.DB
}

// OpenPins prepares the pins bucket in db.
func OpenPins(db *bolt.DB) (*Pins, error) {
	err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(pinsBucket)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open pins: %w", err)
	}
	return &Pins{db: db}, nil
}

// pinKey gives the root a non-empty key, as bbolt requires.
func pinKey(path string) []byte { return []byte("/" + path) }

// Add pins path. Pins below it become redundant and are dropped.
func (p *Pins) Add(path string) error {
	err := p.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(pinsBucket)
		if err := deleteBelow(b, path); err != nil {
			return err
		}
		return b.Put(pinKey(path), nil)
	})
	if err != nil {
		return fmt.Errorf("pin %q: %w", path, err)
	}
	return nil
}

// Remove unpins path and everything pinned below it. It reports whether
// path stays pinned through an ancestor (the caller says so to the user).
func (p *Pins) Remove(path string) (inherited bool, err error) {
	err = p.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(pinsBucket)
		if err := b.Delete(pinKey(path)); err != nil {
			return err
		}
		return deleteBelow(b, path)
	})
	if err != nil {
		return false, fmt.Errorf("unpin %q: %w", path, err)
	}
	inherited, _, err = p.Pinned(path)
	return inherited, err
}

func deleteBelow(b *bolt.Bucket, path string) error {
	prefix := pinKey(path)
	if path != "" {
		prefix = append(prefix, '/')
	}
	var doomed [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if !bytes.Equal(k, pinKey(path)) {
			doomed = append(doomed, append([]byte(nil), k...))
		}
	}
	for _, k := range doomed {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Pinned reports whether path is pinned, and by which pinned path (itself
// or an ancestor).
func (p *Pins) Pinned(path string) (bool, string, error) {
	var by string
	var found bool
	err := p.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(pinsBucket)
		for cur := path; ; {
			if b.Get(pinKey(cur)) != nil {
				found, by = true, cur
				return nil
			}
			if cur == "" {
				return nil
			}
			i := strings.LastIndexByte(cur, '/')
			if i < 0 {
				cur = ""
			} else {
				cur = cur[:i]
			}
		}
	})
	if err != nil {
		return false, "", fmt.Errorf("pin state of %q: %w", path, err)
	}
	return found, by, nil
}

// List returns the pinned paths in order.
func (p *Pins) List() ([]string, error) {
	var out []string
	err := p.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(pinsBucket).ForEach(func(k, _ []byte) error {
			out = append(out, string(k[1:]))
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list pins: %w", err)
	}
	return out, nil
}
