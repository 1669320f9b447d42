// Package trash is the layout and upkeep of the trash of a store without
// versions: a file deleted through a mount is first copied server-side to
// PREFIX.nimbus-trash/DATE/PATH~deleted-TIME (journal.Op.Trash), where DATE
// is the UTC day of the delete (2006-01-02), TIME its UTC time of day to
// the nanosecond (150405.000000000Z), PREFIX the mount's root prefix and
// PATH the file's path below it. nimbus deleted lists it, nimbus restore
// copies a file back, and the mount sweeps date folders older than
// --trash.
//
// The layout is the whole state: nothing is kept locally, so every mount
// of the bucket (and an S3 lifecycle rule on the prefix) sees the same
// trash.
//
// Every trash key carries the time suffix, so that each delete of a path
// keeps its own copy, even two on one day from two machines. The key is
// decided when the delete is journaled (Key), with no request: knowing
// whether a plain DATE/PATH were free would need one per delete, and could
// not be known offline; and a key decided at upload would differ on a
// replay after a crash, copying twice. A suffix only on the later deletes
// could equal a user's own name ("a.txt~deleted-…" deleted plainly);
// since every key has exactly one, the last one is always nimbus's and
// stripping it gives back the path, whatever the user's names look like.
// Keys without a suffix (trash copies made before it existed) are read as
// DATE/PATH, deleted at the copy's modification time.
package trash

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
)

// Dir is the folder of the trash under a mount's root prefix. The vfs hides
// and reserves the name.
const Dir = ".nimbus-trash"

// dateLayout names a date folder.
const dateLayout = "2006-01-02"

// The time suffix of a trash copy's name: suffixSep, then the UTC time of
// day in timeLayout, then "Z".
const (
	suffixSep  = "~deleted-"
	timeLayout = "150405.000000000"
	suffixLen  = len(suffixSep) + len(timeLayout) + 1
)

// Key returns the trash key of the file at path (below the root prefix)
// deleted at t.
func Key(prefix, path string, t time.Time) string {
	t = t.UTC()
	return prefix + Dir + "/" + t.Format(dateLayout) + "/" + path + suffixSep + t.Format(timeLayout) + "Z"
}

// parse splits rel, a trash key below the trash folder, into the deleted
// file's path and the time of its delete. ok is false when rel is not in
// a date folder; a name without a time suffix has a zero time.
func parse(rel string) (path string, deleted time.Time, ok bool) {
	date, rest, found := strings.Cut(rel, "/")
	if !found || rest == "" || strings.HasSuffix(rest, "/") {
		return "", time.Time{}, false // a marker, or not in a date folder
	}
	day, err := time.Parse(dateLayout, date)
	if err != nil {
		return "", time.Time{}, false
	}
	i := len(rest) - suffixLen
	if i <= 0 || rest[i:i+len(suffixSep)] != suffixSep || !strings.HasSuffix(rest, "Z") || rest[i-1] == '/' {
		return rest, time.Time{}, true
	}
	tod, err := time.Parse(timeLayout, rest[i+len(suffixSep):len(rest)-1])
	if err != nil {
		return rest, time.Time{}, true
	}
	return rest[:i], day.Add(tod.Sub(time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC))), true
}

// Entry is one trash copy.
type Entry struct {
	Key  string // the trash copy's key
	Path string // the deleted file's path below the root prefix
	ETag string
	Size int64
	// Deleted is when the file was deleted: the time in its key, or for a
	// key without one, when its trash copy was made.
	Deleted time.Time
}

// lister is what listing the trash needs of the store.
type lister interface {
	List(ctx context.Context, prefix string, fn func(backend.Page) error) error
	ListFlat(ctx context.Context, prefix string, fn func(backend.Page) error) error
}

// List returns the trash copies of the files at or under path (below the
// root prefix; "" is everything), newest first for each path, paths in
// order. One flat listing of the trash.
func List(ctx context.Context, store lister, prefix, path string) ([]Entry, error) {
	root := prefix + Dir + "/"
	var out []Entry
	err := store.ListFlat(ctx, root, func(p backend.Page) error {
		for _, o := range p.Objects {
			rel, deleted, ok := parse(strings.TrimPrefix(o.Key, root))
			if !ok {
				continue
			}
			if path != "" && rel != path && !strings.HasPrefix(rel, path+"/") {
				continue
			}
			if deleted.IsZero() {
				deleted = o.ModTime
			}
			out = append(out, Entry{Key: o.Key, Path: rel, ETag: o.ETag, Size: o.Size, Deleted: deleted})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list the trash %q: %w", root, err)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Path != out[j].Path {
			return out[i].Path < out[j].Path
		}
		return out[i].Deleted.After(out[j].Deleted)
	})
	return out, nil
}

// Newest keeps the newest entry of each path of entries (as List orders
// them).
func Newest(entries []Entry) []Entry {
	var out []Entry
	for i, e := range entries {
		if i == 0 || e.Path != entries[i-1].Path {
			out = append(out, e)
		}
	}
	return out
}

// sweeper is what a sweep needs of the store.
type sweeper interface {
	lister
	Delete(ctx context.Context, key, ifMatch string) error
}

// Sweep deletes the date folders of the trash under prefix whose files
// are all older than keep at now: a folder's day ended keep before now. It
// returns how many trash copies it deleted.
func Sweep(ctx context.Context, store sweeper, prefix string, keep time.Duration, now time.Time) (int, error) {
	root := prefix + Dir + "/"
	var expired []string
	err := store.List(ctx, root, func(p backend.Page) error {
		for _, d := range p.Prefixes {
			day, err := time.Parse(dateLayout, strings.TrimSuffix(strings.TrimPrefix(d, root), "/"))
			if err == nil && !day.Add(24*time.Hour+keep).After(now) {
				expired = append(expired, d)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("list the trash %q: %w", root, err)
	}
	n := 0
	for _, d := range expired {
		var keys []string
		err := store.ListFlat(ctx, d, func(p backend.Page) error {
			for _, o := range p.Objects {
				keys = append(keys, o.Key)
			}
			return nil
		})
		if err != nil {
			return n, fmt.Errorf("list the trash folder %q: %w", d, err)
		}
		for _, k := range keys {
			// Unconditional: whatever is in an expired folder expired.
			if err := store.Delete(ctx, k, ""); err != nil && !errors.Is(err, backend.ErrNotFound) {
				return n, fmt.Errorf("sweep %q from the trash: %w", k, err)
			}
			n++
		}
	}
	return n, nil
}

// SweepEvery runs Sweep at once and then every interval until ctx ends,
// logging what it did. Failures (the store offline) wait for the next
// round.
func SweepEvery(ctx context.Context, store sweeper, prefix string, keep, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		n, err := Sweep(ctx, store, prefix, keep, time.Now())
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			log.Warn("trash sweep failed; trying again later", "err", err, "swept", n)
		case n > 0:
			log.Info("trash swept", "deleted", n, "older_than", keep.String())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
