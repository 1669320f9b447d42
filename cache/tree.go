package cache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The tree's bbolt buckets. Only this file touches them.
var (
	// treeEntries maps entryKey(dir, name) to an encoded Entry.
	treeEntries = []byte("tree.entries")
	// treeDirs maps dirKey(path) to its encoded DirState.
	treeDirs = []byte("tree.dirs")
	// treeSkipped maps an object key that cannot be shown to the reason.
	treeSkipped = []byte("tree.skipped")
)

// Entry is one known child of a directory, as the last listing (or a later
// HEAD) reported it.
type Entry struct {
	Name  string
	Dir   bool
	Size  int64
	ETag  string
	MTime time.Time
	// Local marks an entry created, changed or deleted on this machine and
	// not yet confirmed by the store: listings do not override it.
	Local bool
	// Gone marks a local delete not yet confirmed (a tombstone, always
	// Local): Lookup and Children do not show it, and a listing that still
	// has the object does not bring it back.
	Gone bool
	// Attrs marks MTime and Mode as the ones stored with version ETag (as
	// object metadata) rather than the store's modification time: a
	// listing, which carries no metadata, keeps them while the ETag stays.
	Attrs bool
	// Mode holds the permission bits, and the type bits (S_IFMT) when the
	// entry is not a plain file or folder or its mode was set; 0 means the
	// default. Records written before types were kept hold bits alone,
	// which describe a regular file: mode 0 is S_IFREG with no bits.
	Mode uint32
	// Owner marks UID and GID as stored; otherwise the mounting user's.
	Owner    bool
	UID, GID uint32
	// ATime and CTime are zero when unknown (then: MTime).
	ATime, CTime time.Time
	// Target is a symlink's target, "" when unknown (read from the body).
	Target string
	// Rdev is a device's number.
	Rdev uint32
}

// Type is the entry's S_IFMT bits.
func (e Entry) Type() uint32 {
	switch {
	case e.Dir:
		return sIFDIR
	case e.Mode&sIFMT != 0:
		return e.Mode & sIFMT
	}
	return sIFREG
}

// File-type bits of Entry.Mode, as in stat(2).
const (
	sIFMT  = 0o170000
	sIFDIR = 0o040000
	sIFREG = 0o100000
)

// CopyAttrs gives e the attributes of from (mode, owner, times, link
// target, device), leaving its name, kind, size and version.
func (e *Entry) CopyAttrs(from Entry) {
	e.Attrs, e.MTime, e.Mode = from.Attrs, from.MTime, from.Mode
	e.Owner, e.UID, e.GID = from.Owner, from.UID, from.GID
	e.ATime, e.CTime, e.Target, e.Rdev = from.ATime, from.CTime, from.Target, from.Rdev
}

// extended reports whether e has attributes that older records lack.
func (e Entry) extended() bool {
	return e.Owner || !e.ATime.IsZero() || !e.CTime.IsZero() || e.Target != "" || e.Rdev != 0
}

// DirState records when a directory was last listed completely.
type DirState struct {
	ListedAt time.Time
}

// Skipped is a remote key that Nimbus cannot show as a POSIX path.
type Skipped struct {
	Key    string
	Reason string
}

// Tree is the persisted metadata of the remote tree: for each directory that
// was listed, its children and when it was listed. Directories are relative
// slash-separated paths, "" being the root. It holds nothing in memory, so a
// tree of a million keys costs disk, not RAM.
type Tree struct {
	db *bolt.DB
}

// OpenTree prepares the tree's buckets in db.
func OpenTree(db *bolt.DB) (*Tree, error) {
	err := db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{treeEntries, treeDirs, treeSkipped} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open tree: %w", err)
	}
	return &Tree{db: db}, nil
}

// entryKey orders a directory's children together: names cannot hold NUL.
func entryKey(dir, name string) []byte {
	k := make([]byte, 0, len(dir)+1+len(name))
	k = append(k, dir...)
	k = append(k, 0)
	return append(k, name...)
}

func childPrefix(dir string) []byte { return entryKey(dir, "") }

// dirKey gives the root a non-empty key: bbolt refuses empty keys.
func dirKey(dir string) []byte { return []byte("/" + dir) }

// Lookup returns dir's child name, and whether it is known. Tombstones
// (local deletes not yet confirmed) are not.
func (t *Tree) Lookup(dir, name string) (Entry, bool, error) {
	e, ok, err := t.Get(dir, name)
	if err != nil || !ok || e.Gone {
		return Entry{}, false, err
	}
	return e, true, nil
}

// Get is Lookup with tombstones included.
func (t *Tree) Get(dir, name string) (Entry, bool, error) {
	var e Entry
	var found bool
	err := t.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(treeEntries).Get(entryKey(dir, name))
		if v == nil {
			return nil
		}
		var err error
		e, err = decodeEntry(name, v)
		found = err == nil
		return err
	})
	if err != nil {
		return Entry{}, false, fmt.Errorf("lookup %q in %q: %w", name, dir, err)
	}
	return e, found, nil
}

// Children calls fn for each known child of dir in name order, until fn
// returns false.
func (t *Tree) Children(dir string, fn func(Entry) bool) error {
	return t.ChildrenAfter(dir, "", fn)
}

// ChildrenAfter is Children from the first name after after, in one read
// transaction: a reader of a huge folder reads it a page at a time, each
// page after the last name it got.
func (t *Tree) ChildrenAfter(dir, after string, fn func(Entry) bool) error {
	prefix := childPrefix(dir)
	err := t.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(treeEntries).Cursor()
		k, v := c.Seek(entryKey(dir, after))
		if after != "" && bytes.HasPrefix(k, prefix) && string(k[len(prefix):]) == after {
			k, v = c.Next()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			e, err := decodeEntry(string(k[len(prefix):]), v)
			if err != nil {
				return err
			}
			if e.Gone {
				continue
			}
			if !fn(e) {
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("children of %q: %w", dir, err)
	}
	return nil
}

// KeepKnownAttrs gives e, as a listing shows it, the attributes known of
// old, its entry in the tree, when the listing carries none of its own:
// a file's when it is the same version (ETag), and a folder's always (a
// listing carries nothing of a folder's marker: what was known of it holds
// until the attribute index says otherwise).
func (e *Entry) KeepKnownAttrs(old Entry) {
	switch {
	case e.Attrs || !old.Attrs:
	case !old.Dir && !e.Dir && e.ETag == old.ETag:
		e.CopyAttrs(old)
	case old.Dir && e.Dir:
		e.CopyAttrs(old)
	}
}

// LocalChildren calls fn, in name order, for each child of dir with a
// local change, tombstones included: what a listing must not override. It
// decodes only those entries.
func (t *Tree) LocalChildren(dir string, fn func(Entry) bool) error {
	prefix := childPrefix(dir)
	err := t.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(treeEntries).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if len(v) == 0 || v[0]&entryIsLocal == 0 {
				continue
			}
			e, err := decodeEntry(string(k[len(prefix):]), v)
			if err != nil {
				return err
			}
			if !fn(e) {
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("local children of %q: %w", dir, err)
	}
	return nil
}

// Subdirs counts the known folders directly in dir (a folder's link
// count), reading only each entry's flags.
func (t *Tree) Subdirs(dir string) (int, error) {
	prefix := childPrefix(dir)
	n := 0
	err := t.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(treeEntries).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if len(v) > 0 && v[0]&entryIsDir != 0 && v[0]&entryIsGone == 0 {
				n++
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("subfolders of %q: %w", dir, err)
	}
	return n, nil
}

// Dir returns the state of dir, and whether it was ever listed.
func (t *Tree) Dir(dir string) (DirState, bool, error) {
	var st DirState
	var found bool
	err := t.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(treeDirs).Get(dirKey(dir))
		if v == nil {
			return nil
		}
		if len(v) != 8 {
			return fmt.Errorf("corrupt dir record of %d bytes", len(v))
		}
		found = true
		st.ListedAt = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
		return nil
	})
	if err != nil {
		return DirState{}, false, fmt.Errorf("dir state of %q: %w", dir, err)
	}
	return st, found, nil
}

// ReplaceDir records a complete listing of dir: children not in entries are
// removed (with their subtrees), the others are written (Local entries stay
// as they are: local changes win until the store confirms them), and the skipped
// keys found directly under dir replace the ones recorded before. skippedPrefix
// is the key prefix of dir, so that its old skipped records can be found.
func (t *Tree) ReplaceDir(dir string, entries []Entry, skippedPrefix string, skipped []Skipped, listedAt time.Time) error {
	sorted := make([]Entry, len(entries))
	copy(sorted, entries)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	err := t.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(treeEntries)
		// A listing writes one directory's run of keys in order: pages
		// split at bbolt's default half-full would double the database,
		// and its mapped pages count in the mount's resident memory.
		b.FillPercent = listingFillPercent
		prefix := childPrefix(dir)
		// Collect stale children first: a cursor must not see its own
		// deletes. Local entries are neither stale nor overwritten.
		var stale []Entry
		local := make(map[string]bool)
		c := b.Cursor()
		i := 0
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			name := string(k[len(prefix):])
			old, err := decodeEntry(name, v)
			if err != nil {
				return err
			}
			if old.Local {
				local[name] = true
				continue
			}
			for i < len(sorted) && sorted[i].Name < name {
				i++
			}
			listed := i < len(sorted) && sorted[i].Name == name
			if listed {
				sorted[i].KeepKnownAttrs(old)
			}
			if !listed || (old.Dir && !sorted[i].Dir) {
				// Gone remotely, or a dir that became a file: drop the
				// entry and any subtree.
				stale = append(stale, old)
			}
		}
		for _, e := range stale {
			if err := b.Delete(entryKey(dir, e.Name)); err != nil {
				return err
			}
			if e.Dir {
				if err := deleteSubtree(tx, JoinPath(dir, e.Name)); err != nil {
					return err
				}
			}
		}
		for _, e := range sorted {
			if local[e.Name] {
				continue
			}
			if err := b.Put(entryKey(dir, e.Name), encodeEntry(e)); err != nil {
				return err
			}
		}
		if err := replaceSkipped(tx, skippedPrefix, skipped); err != nil {
			return err
		}
		var ts [8]byte
		binary.BigEndian.PutUint64(ts[:], uint64(listedAt.UnixNano()))
		return tx.Bucket(treeDirs).Put(dirKey(dir), ts[:])
	})
	if err != nil {
		return fmt.Errorf("record listing of %q: %w", dir, err)
	}
	return nil
}

// listingFillPercent is how full ReplaceDir packs the pages it splits.
const listingFillPercent = 0.9

// PutEntry records one child of dir, as a HEAD reported it.
func (t *Tree) PutEntry(dir string, e Entry) error {
	err := t.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(treeEntries).Put(entryKey(dir, e.Name), encodeEntry(e))
	})
	if err != nil {
		return fmt.Errorf("record %q in %q: %w", e.Name, dir, err)
	}
	return nil
}

// RemoveEntry forgets one child of dir (and its subtree if it is a directory).
func (t *Tree) RemoveEntry(dir, name string) error {
	err := t.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(treeEntries).Delete(entryKey(dir, name)); err != nil {
			return err
		}
		return deleteSubtree(tx, JoinPath(dir, name))
	})
	if err != nil {
		return fmt.Errorf("forget %q in %q: %w", name, dir, err)
	}
	return nil
}

// Skipped returns every recorded key that cannot be shown, in key order.
func (t *Tree) Skipped() ([]Skipped, error) {
	var out []Skipped
	err := t.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(treeSkipped).ForEach(func(k, v []byte) error {
			out = append(out, Skipped{Key: string(k), Reason: string(v)})
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("skipped keys: %w", err)
	}
	return out, nil
}

// replaceSkipped swaps the skipped records directly under keyPrefix (not in
// deeper prefixes: those belong to other directories' listings).
func replaceSkipped(tx *bolt.Tx, keyPrefix string, skipped []Skipped) error {
	b := tx.Bucket(treeSkipped)
	var old [][]byte
	c := b.Cursor()
	p := []byte(keyPrefix)
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		rest := strings.TrimSuffix(string(k[len(p):]), "/")
		if !strings.Contains(rest, "/") {
			old = append(old, append([]byte(nil), k...))
		}
	}
	for _, k := range old {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	for _, s := range skipped {
		if err := b.Put([]byte(s.Key), []byte(s.Reason)); err != nil {
			return err
		}
	}
	return nil
}

// deleteSubtree drops every entry and dir record at or below dir.
func deleteSubtree(tx *bolt.Tx, dir string) error {
	prefixes := map[string][][]byte{
		// Children of dir ("dir\x00name") and of its descendants ("dir/…").
		string(treeEntries): {childPrefix(dir), []byte(dir + "/")},
		string(treeDirs):    {dirKey(dir + "/")},
	}
	for bucket, ps := range prefixes {
		b := tx.Bucket([]byte(bucket))
		var doomed [][]byte
		for _, p := range ps {
			c := b.Cursor()
			for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
				doomed = append(doomed, append([]byte(nil), k...))
			}
		}
		if bucket == string(treeDirs) && b.Get(dirKey(dir)) != nil {
			doomed = append(doomed, dirKey(dir))
		}
		for _, k := range doomed {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
	}
	return nil
}

// JoinPath joins a directory path ("" = root) and a name.
func JoinPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

const (
	entryIsDir   = 1
	entryIsLocal = 2
	entryIsGone  = 4
	entryAttrs   = 8
)

// encodeEntry packs an entry compactly: flags, size, mtime, etag. The name
// is the key's suffix and is not repeated.
func encodeEntry(e Entry) []byte {
	buf := make([]byte, 0, 1+3*binary.MaxVarintLen64+len(e.ETag))
	var flags byte
	if e.Dir {
		flags |= entryIsDir
	}
	if e.Local {
		flags |= entryIsLocal
	}
	if e.Gone {
		flags |= entryIsGone
	}
	if e.Attrs {
		flags |= entryAttrs
	}
	buf = append(buf, flags)
	buf = binary.AppendVarint(buf, e.Size)
	var mtime int64
	if !e.MTime.IsZero() {
		mtime = e.MTime.UnixNano()
	}
	buf = binary.AppendVarint(buf, mtime)
	buf = binary.AppendUvarint(buf, uint64(len(e.ETag)))
	buf = append(buf, e.ETag...)
	if e.Mode != 0 || e.extended() {
		buf = binary.AppendUvarint(buf, uint64(e.Mode)) // absent in older records
	}
	if e.extended() { // absent in older records
		var owner uint64
		if e.Owner {
			owner = 1
		}
		buf = binary.AppendUvarint(buf, owner)
		buf = binary.AppendUvarint(buf, uint64(e.UID))
		buf = binary.AppendUvarint(buf, uint64(e.GID))
		buf = binary.AppendVarint(buf, unixNano(e.ATime))
		buf = binary.AppendVarint(buf, unixNano(e.CTime))
		buf = binary.AppendUvarint(buf, uint64(e.Rdev))
		buf = binary.AppendUvarint(buf, uint64(len(e.Target)))
		buf = append(buf, e.Target...)
	}
	return buf
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

var errCorruptEntry = errors.New("corrupt tree entry")

func decodeEntry(name string, v []byte) (Entry, error) {
	e := Entry{Name: name}
	if len(v) < 1 {
		return e, errCorruptEntry
	}
	e.Dir = v[0]&entryIsDir != 0
	e.Local = v[0]&entryIsLocal != 0
	e.Gone = v[0]&entryIsGone != 0
	e.Attrs = v[0]&entryAttrs != 0
	v = v[1:]
	size, n := binary.Varint(v)
	if n <= 0 {
		return e, errCorruptEntry
	}
	e.Size, v = size, v[n:]
	mtime, n := binary.Varint(v)
	if n <= 0 {
		return e, errCorruptEntry
	}
	if mtime != 0 {
		e.MTime = time.Unix(0, mtime)
	}
	v = v[n:]
	l, n := binary.Uvarint(v)
	if n <= 0 || uint64(len(v)-n) < l {
		return e, errCorruptEntry
	}
	e.ETag = string(v[n : n+int(l)])
	if v = v[n+int(l):]; len(v) > 0 {
		mode, n := binary.Uvarint(v)
		if n <= 0 {
			return e, errCorruptEntry
		}
		e.Mode = uint32(mode)
		v = v[n:]
	}
	if len(v) > 0 {
		var nums [6]uint64
		for i := range nums {
			var n int
			if i == 3 || i == 4 { // the times are signed
				var t int64
				t, n = binary.Varint(v)
				nums[i] = uint64(t)
			} else {
				nums[i], n = binary.Uvarint(v)
			}
			if n <= 0 {
				return e, errCorruptEntry
			}
			v = v[n:]
		}
		e.Owner, e.UID, e.GID = nums[0] == 1, uint32(nums[1]), uint32(nums[2])
		e.ATime, e.CTime = fromUnixNano(int64(nums[3])), fromUnixNano(int64(nums[4]))
		e.Rdev = uint32(nums[5])
		l, n := binary.Uvarint(v)
		if n <= 0 || uint64(len(v)-n) < l {
			return e, errCorruptEntry
		}
		e.Target = string(v[n : n+int(l)])
	}
	return e, nil
}

// MarkStale makes the next access to dir list it again.
func (t *Tree) MarkStale(dir string) error {
	err := t.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(treeDirs)
		if b.Get(dirKey(dir)) == nil {
			return nil
		}
		var zero [8]byte
		return b.Put(dirKey(dir), zero[:])
	})
	if err != nil {
		return fmt.Errorf("mark %q stale: %w", dir, err)
	}
	return nil
}

// MoveDir moves the known subtree of the directory src to dst (a rename
// done locally): every entry below it becomes Local under dst, and src
// becomes a tombstone. What was never listed under src is not known here;
// it appears under dst when dst is listed after the store has it.
func (t *Tree) MoveDir(srcDir, srcName, dstDir, dstName string) error {
	src, dst := JoinPath(srcDir, srcName), JoinPath(dstDir, dstName)
	err := t.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(treeEntries)
		moving := Entry{Name: dstName, Dir: true, Local: true}
		if v := b.Get(entryKey(srcDir, srcName)); v != nil {
			if old, err := decodeEntry(srcName, v); err == nil {
				moving.CopyAttrs(old) // a folder keeps its mode, owner and times
			}
		}
		type kv struct{ k, v []byte }
		var moved []kv
		for _, p := range [][]byte{childPrefix(src), []byte(src + "/")} {
			c := b.Cursor()
			for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
				name := k[bytes.IndexByte(k, 0)+1:]
				e, err := decodeEntry(string(name), v)
				if err != nil {
					return err
				}
				e.Local = true
				rest := k[len(src):] // "\x00name" or "/sub\x00name"
				moved = append(moved, kv{append([]byte(dst), rest...), encodeEntry(e)})
			}
		}
		// The subfolders' listing states move too: what they list is known
		// under the new name, offline as well.
		dirs := tx.Bucket(treeDirs)
		var movedDirs []kv
		c := dirs.Cursor()
		for k, v := c.Seek(dirKey(src + "/")); k != nil && bytes.HasPrefix(k, dirKey(src+"/")); k, v = c.Next() {
			movedDirs = append(movedDirs, kv{append(dirKey(dst), k[len(dirKey(src)):]...), append([]byte(nil), v...)})
		}
		if err := deleteSubtree(tx, src); err != nil {
			return err
		}
		if err := deleteSubtree(tx, dst); err != nil {
			return err
		}
		for _, m := range moved {
			if err := b.Put(m.k, m.v); err != nil {
				return err
			}
		}
		for _, m := range movedDirs {
			if err := dirs.Put(m.k, m.v); err != nil {
				return err
			}
		}
		if err := b.Put(entryKey(srcDir, srcName), encodeEntry(Entry{Name: srcName, Dir: true, Local: true, Gone: true})); err != nil {
			return err
		}
		if err := b.Put(entryKey(dstDir, dstName), encodeEntry(moving)); err != nil {
			return err
		}
		// dst's listing is whatever moved: complete as far as src was.
		var ts [8]byte
		binary.BigEndian.PutUint64(ts[:], uint64(time.Now().UnixNano()))
		return tx.Bucket(treeDirs).Put(dirKey(dst), ts[:])
	})
	if err != nil {
		return fmt.Errorf("move %q to %q: %w", src, dst, err)
	}
	return nil
}

// LocalEntries calls fn for every Local entry (local changes not confirmed
// by the store), with its directory. It scans the whole tree: it is meant
// for the start of a mount.
func (t *Tree) LocalEntries(fn func(dir string, e Entry) error) error {
	type found struct {
		dir string
		e   Entry
	}
	var all []found
	err := t.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(treeEntries).ForEach(func(k, v []byte) error {
			if len(v) == 0 || v[0]&entryIsLocal == 0 {
				return nil
			}
			i := bytes.IndexByte(k, 0)
			if i < 0 {
				return errCorruptEntry
			}
			e, err := decodeEntry(string(k[i+1:]), v)
			if err != nil {
				return err
			}
			all = append(all, found{string(k[:i]), e})
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("local entries: %w", err)
	}
	for _, f := range all {
		if err := fn(f.dir, f.e); err != nil {
			return err
		}
	}
	return nil
}
