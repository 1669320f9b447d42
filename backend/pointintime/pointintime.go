// Package pointintime is a read-only view of a versioned store as it was at
// a given time (nimbus mount --at), as a backend.Backend decorator: every
// key shows its newest version written at or before that time, unless that
// version is a delete marker (the key was deleted then), and later keys do
// not show at all. rclone's --s3-version-at behaves the same.
//
// Listings are built from the store's version listing (ListObjectVersions
// of the whole prefix, at any depth, since the folders of the past are the
// key prefixes that had a live version then), and reads go to the chosen
// version by its ID. Every write fails with ErrReadOnly.
package pointintime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
)

// ErrReadOnly: a write to the past.
var ErrReadOnly = errors.New("the point-in-time view (--at) is read-only")

// versionStore is what the view needs of the store.
type versionStore interface {
	backend.VersionLister
	backend.VersionReader
	String() string
}

// Store is the view. It is safe for concurrent use.
type Store struct {
	inner versionStore
	at    time.Time

	mu      sync.Mutex
	shownAt map[string]backend.Version // GUARDED_BY(mu): key → the version shown, as last listed
}

var _ backend.Backend = (*Store)(nil)

// New returns the view of inner at time at.
func New(inner versionStore, at time.Time) *Store {
	return &Store{inner: inner, at: at, shownAt: map[string]backend.Version{}}
}

// pageSize bounds the entries of one page of List and ListFlat, as the
// store's own listings do.
const pageSize = 1000

// shown calls fn, in key order, with the version each key under prefix
// shows at s.at (keys deleted or not yet written then are left out), and
// remembers it for Get.
func (s *Store) shown(ctx context.Context, prefix string, fn func(backend.Version) error) error {
	var cur string // the key whose versions are being read
	done := false  // its version is decided
	return s.inner.ListVersions(ctx, prefix, func(page []backend.Version) error {
		for _, v := range page {
			if v.Key != cur {
				cur, done = v.Key, false
			}
			if done || v.ModTime.After(s.at) {
				continue // newest first: the first one not after s.at decides
			}
			done = true
			if v.Deleted {
				continue
			}
			s.mu.Lock()
			s.shownAt[v.Key] = v
			s.mu.Unlock()
			if err := fn(v); err != nil {
				return err
			}
		}
		return nil
	})
}

func info(v backend.Version) backend.ObjectInfo {
	return backend.ObjectInfo{Key: v.Key, Size: v.Size, ETag: v.ETag, ModTime: v.ModTime}
}

// List implements backend.Backend: the objects directly under prefix that
// existed at the view's time, and the folders that held any.
func (s *Store) List(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	var page backend.Page
	lastPrefix := ""
	flush := func() error {
		if len(page.Objects)+len(page.Prefixes) == 0 {
			return nil
		}
		p := page
		page = backend.Page{}
		return fn(p)
	}
	err := s.shown(ctx, prefix, func(v backend.Version) error {
		rest := strings.TrimPrefix(v.Key, prefix)
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			// Below a folder of prefix (its marker included).
			dir := prefix + rest[:i+1]
			if dir == lastPrefix {
				return nil
			}
			lastPrefix = dir
			page.Prefixes = append(page.Prefixes, dir)
		} else {
			page.Objects = append(page.Objects, info(v)) // the marker of prefix too
		}
		if len(page.Objects)+len(page.Prefixes) >= pageSize {
			return flush()
		}
		return nil
	})
	if err != nil {
		return err
	}
	return flush()
}

// ListFlat implements backend.Backend: every key under prefix that existed
// at the view's time.
func (s *Store) ListFlat(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	var page backend.Page
	err := s.shown(ctx, prefix, func(v backend.Version) error {
		page.Objects = append(page.Objects, info(v))
		if len(page.Objects) >= pageSize {
			p := page
			page = backend.Page{}
			return fn(p)
		}
		return nil
	})
	if err != nil || len(page.Objects) == 0 {
		return err
	}
	return fn(page)
}

var _ backend.VersionLister = (*Store)(nil)

// Versioning implements backend.VersionLister: the store's.
func (s *Store) Versioning(ctx context.Context) (bool, error) {
	return s.inner.Versioning(ctx)
}

// ListVersions implements backend.VersionLister for nimbus versions and
// deleted in the view: the history as it stood at the view's time. Only
// the versions and delete markers written at or before it are listed,
// newest first for each key, and Current marks the one each key showed
// then (a delete marker when it was deleted then), not the one current
// now.
func (s *Store) ListVersions(ctx context.Context, prefix string, fn func([]backend.Version) error) error {
	var cur string   // the key whose versions are being read
	decided := false // its version shown at s.at is passed
	return s.inner.ListVersions(ctx, prefix, func(page []backend.Version) error {
		out := make([]backend.Version, 0, len(page))
		for _, v := range page {
			if v.Key != cur {
				cur, decided = v.Key, false
			}
			if v.ModTime.After(s.at) {
				continue
			}
			v.Current = !decided
			decided = true
			out = append(out, v)
		}
		if len(out) == 0 {
			return nil
		}
		return fn(out)
	})
}

// version returns the version key shows at the view's time; ErrNotFound if
// none (deleted, or written later).
func (s *Store) version(ctx context.Context, key string) (backend.Version, error) {
	var found *backend.Version
	err := s.shown(ctx, key, func(v backend.Version) error {
		if v.Key == key {
			found = &v
		}
		return nil
	})
	if err != nil {
		return backend.Version{}, err
	}
	if found == nil {
		return backend.Version{}, fmt.Errorf("%q at %s: %w", key, s.at.UTC().Format(time.RFC3339), backend.ErrNotFound)
	}
	return *found, nil
}

// Stat implements backend.Backend: the version's metadata (a version
// listing and a HEAD of the version).
func (s *Store) Stat(ctx context.Context, key string) (backend.ObjectInfo, error) {
	v, err := s.version(ctx, key)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	got, err := s.inner.StatVersion(ctx, key, v.ID)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	got.ETag, got.ModTime = v.ETag, v.ModTime
	return got, nil
}

// Get implements backend.Backend with a GET of the version shown, known
// from the last listing that showed the key (else from a version listing
// of the key). ifMatch is checked against that version's ETag.
func (s *Store) Get(ctx context.Context, key string, off, n int64, ifMatch string) (io.ReadCloser, error) {
	s.mu.Lock()
	v, ok := s.shownAt[key]
	s.mu.Unlock()
	if !ok {
		var err error
		if v, err = s.version(ctx, key); err != nil {
			return nil, err
		}
	}
	if ifMatch != "" && v.ETag != ifMatch {
		return nil, fmt.Errorf("get %q at %s: etag is %s, not %s: %w", key, s.at.UTC().Format(time.RFC3339), v.ETag, ifMatch, backend.ErrPrecondition)
	}
	return s.inner.GetVersion(ctx, key, v.ID, off, n)
}

// Put implements backend.Backend: refused.
func (s *Store) Put(_ context.Context, key string, _ io.ReadSeeker, _ int64, _ map[string]string, _ backend.Cond) (backend.ObjectInfo, error) {
	return backend.ObjectInfo{}, fmt.Errorf("put %q: %w", key, ErrReadOnly)
}

// Copy implements backend.Backend: refused.
func (s *Store) Copy(_ context.Context, _, _, dst string, _ backend.Cond) (backend.ObjectInfo, error) {
	return backend.ObjectInfo{}, fmt.Errorf("copy to %q: %w", dst, ErrReadOnly)
}

// Delete implements backend.Backend: refused.
func (s *Store) Delete(_ context.Context, key, _ string) error {
	return fmt.Errorf("delete %q: %w", key, ErrReadOnly)
}

// String names the store and the time shown.
func (s *Store) String() string {
	return s.inner.String() + " at " + s.at.UTC().Format(time.RFC3339)
}
