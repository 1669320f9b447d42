package vfs

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/attrindex"
	"github.com/nimbus-fs/nimbus/backend/snapshots"
	"github.com/nimbus-fs/nimbus/backend/trash"
	"github.com/nimbus-fs/nimbus/cache"
)

const (
	maxNameLen = 255  // POSIX NAME_MAX
	maxKeyLen  = 1024 // S3's key limit, in bytes
)

// whyUnshowable says why a name from the store cannot be a POSIX name, or "".
func whyUnshowable(name string) string {
	switch {
	case name == "":
		return "empty path segment"
	case name == "." || name == "..":
		return "dot path segment"
	case len(name) > maxNameLen:
		return "name longer than 255 bytes"
	case !utf8.ValidString(name):
		return "name is not valid UTF-8"
	case strings.ContainsRune(name, 0):
		return "name contains NUL"
	}
	return ""
}

// reservedName reports whether name belongs to nimbus's own objects in the
// bucket: the per-folder attribute index (backend/attrindex), the hidden
// folder of snapshots (backend/snapshots) and the trash (backend/trash).
// Listings hide them, and no file or folder may take their names.
func reservedName(name string) bool {
	return name == attrindex.Name || name == snapshots.Dir || name == trashDir
}

// trashDir is the folder of deleted files kept on an unversioned bucket
// (package trash).
const trashDir = trash.Dir

// checkName refuses a local name that is reserved. The kernel looks a name
// up before it creates, makes a folder, renames onto or links it, so a
// refusal at lookup refuses all of those.
func checkName(name string) error {
	if reservedName(name) {
		return fmt.Errorf("%q: %w", name, errNameReserved)
	}
	if len(name) > maxNameLen {
		return errSegmentTooLong
	}
	return nil
}

// checkSegments refuses a key whose last segment (the name being made) is
// longer than NAME_MAX; the kernel itself allows up to 1,024 bytes.
func checkSegments(key string) error {
	name := strings.TrimSuffix(key, "/")
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		name = name[i+1:]
	}
	if len(name) > maxNameLen {
		return errSegmentTooLong
	}
	return nil
}

// checkKey validates a key made from a local name before it is sent.
func checkKey(key string) error {
	if !utf8.ValidString(key) {
		return errNameInvalid
	}
	if len(key) > maxKeyLen {
		return errNameTooLong
	}
	return nil
}

// listingToEntries turns the pages of a delimited listing under keyPrefix
// into directory entries, with the attributes the listing carries (the
// attribute index's), and reports the keys that cannot be shown. When a
// key is both an object and a prefix, the directory wins.
func listingToEntries(keyPrefix string, pages []backend.Page) ([]cache.Entry, []cache.Skipped) {
	var entries []cache.Entry
	var skipped []cache.Skipped
	dirs := make(map[string]bool)
	for _, p := range pages {
		for _, pfx := range p.Prefixes {
			name := strings.TrimSuffix(strings.TrimPrefix(pfx, keyPrefix), "/")
			if reservedName(name) {
				continue // ours, not the user's
			}
			if why := whyUnshowable(name); why != "" {
				skipped = append(skipped, cache.Skipped{Key: pfx, Reason: why})
				continue
			}
			if !dirs[name] {
				dirs[name] = true
				e := cache.Entry{Name: name, Dir: true}
				if a, ok := p.PrefixAttrs[pfx]; ok {
					applyAttrs(&e, a)
				}
				entries = append(entries, e)
			}
		}
	}
	for _, p := range pages {
		for _, o := range p.Objects {
			if o.Key == keyPrefix {
				continue // the directory's own marker
			}
			name := strings.TrimPrefix(o.Key, keyPrefix)
			if reservedName(name) {
				continue // ours, not the user's
			}
			if why := whyUnshowable(name); why != "" {
				skipped = append(skipped, cache.Skipped{Key: o.Key, Reason: why})
				continue
			}
			if dirs[name] {
				skipped = append(skipped, cache.Skipped{Key: o.Key, Reason: "shadowed by the directory " + o.Key + "/"})
				continue
			}
			e := cache.Entry{Name: name, Size: o.Size, ETag: o.ETag, MTime: o.ModTime}
			if o.Attrs != nil {
				applyAttrs(&e, *o.Attrs)
			}
			entries = append(entries, e)
		}
	}
	return entries, skipped
}
