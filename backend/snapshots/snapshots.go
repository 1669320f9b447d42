// Package snapshots keeps the snapshots of a mount's partial edits: when a
// large file that is not cached is edited, the vfs does not download it
// first; it has the store make a snapshot, a server-side copy of the
// version being edited (one request, no bytes over the network), and the
// working copy lacks what the snapshot holds. The upload copies unchanged
// parts server-side and reads from the snapshot only the bytes around the
// changes it sends (journal.Partial). The vfs keeps the partial-edit logic
// (which ranges a working copy lacks, reading them through the snapshot);
// this package owns the objects.
//
// Why a snapshot rather than reading the edited version later: if another
// machine replaces that version before the upload, the local version must
// still be uploaded whole, as a conflicted copy, and S3 keeps no old
// versions to rebuild it from.
//
// # Layout and lifetime
//
// Snapshots live under ROOT.nimbus-snapshots/<mount id>/<random id>, ROOT
// being the mount's root prefix and the mount id that of its cache folder,
// stable across remounts, so that a mount deletes only its own. A snapshot
// is held (Hold) by each working copy that refers to it, from before it is
// made, and is referenced by the pending journal ops whose Partial reads
// from it (Config.Referenced). A sweep deletes those that nothing refers
// to, once two sweeps in a row found them so (a reference moves from a
// working copy to a journal op in two steps): KeepSweeping sweeps at start
// (the leftovers of a crash) and every minute while the mount has made or
// found any; at unmount, SweepFinal no longer counts working copies, and a
// crash leaves them for the next mount.
package snapshots

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
)

// Dir is the hidden folder of snapshots, at the mount's root. The vfs
// reserves the name.
const Dir = ".nimbus-snapshots"

// sweepInterval is how often unused snapshots are looked for, while this
// mount has any; firstSweep is when the first sweep runs.
const (
	sweepInterval = time.Minute
	firstSweep    = 5 * time.Second
)

// store is what snapshots need of the object store.
type store interface {
	ListFlat(ctx context.Context, prefix string, fn func(backend.Page) error) error
	Copy(ctx context.Context, src, srcETag, dst string, cond backend.Cond) (backend.ObjectInfo, error)
	Delete(ctx context.Context, key string, ifMatch string) error
}

// Config describes the mount whose snapshots a Store keeps.
type Config struct {
	// Root is the key prefix of the mount's root: "" or ending in "/".
	Root string
	// MountID names this mount's snapshots apart from other mounts' of the
	// same bucket; it must not be empty.
	MountID string
	// Referenced returns the snapshot keys that pending journal ops read
	// from. A sweep calls it after listing the snapshots.
	Referenced func() []string
	Logger     *slog.Logger
}

// Store makes, holds and sweeps one mount's snapshots.
type Store struct {
	store  store
	cfg    Config
	prefix string
	log    *slog.Logger

	mu sync.Mutex
	// held counts the working copies that refer to each snapshot key.
	held map[string]int // GUARDED_BY(mu)
	// suspects are keys the last sweep found unreferenced: deleted if the
	// next one finds them unreferenced still.
	suspects map[string]bool // GUARDED_BY(mu)
	// made is set once this mount has made a snapshot or found one.
	made bool // GUARDED_BY(mu)
}

// New returns the snapshots of the mount cfg describes, in st. It fails
// without a mount id: snapshots of different mounts must not mix.
func New(st store, cfg Config) (*Store, error) {
	if cfg.MountID == "" || strings.Contains(cfg.MountID, "/") {
		return nil, fmt.Errorf("snapshots need a mount id without '/', not %q", cfg.MountID)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Store{store: st, cfg: cfg, prefix: cfg.Root + Dir + "/" + cfg.MountID + "/", log: log, held: make(map[string]int)}, nil
}

// Prefix is the key prefix of this mount's snapshots.
func (s *Store) Prefix() string { return s.prefix }

// Make snapshots version etag of key, held until release is called. It
// fails with backend.ErrPrecondition if etag is no longer key's version.
func (s *Store) Make(ctx context.Context, key, etag string) (snap backend.ObjectInfo, release func(), err error) {
	id := make([]byte, 12)
	if _, err := rand.Read(id); err != nil {
		return backend.ObjectInfo{}, nil, err
	}
	dst := s.prefix + hex.EncodeToString(id)
	// Held before it exists, so that no sweep can take it for garbage.
	release = s.Hold(dst)
	info, err := s.store.Copy(ctx, key, etag, dst, backend.Cond{IfNoneMatch: true})
	if err != nil {
		release()
		return backend.ObjectInfo{}, nil, fmt.Errorf("snapshot of %q: %w", key, err)
	}
	info.Key = dst
	return info, release, nil
}

// Hold counts a working copy's reference to snapshot key until release.
func (s *Store) Hold(key string) (release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.held[key]++
	s.made = true
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.held[key]--; s.held[key] <= 0 {
				delete(s.held, key)
			}
		})
	}
}

// Delete deletes snapshot key now, for a working copy that failed to
// start from it.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.store.Delete(ctx, key, ""); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", key, err)
	}
	return nil
}

// Sweep deletes this mount's snapshots that nothing refers to, no pending
// journal op and no working copy, once two sweeps in a row found them so.
func (s *Store) Sweep(ctx context.Context) error { return s.sweep(ctx, false) }

// SweepFinal deletes this mount's snapshots that no pending journal op
// refers to, at once. It is for the end of a mount: working copies no
// longer count (a node the kernel never released may still hold one).
func (s *Store) SweepFinal(ctx context.Context) error { return s.sweep(ctx, true) }

func (s *Store) sweep(ctx context.Context, final bool) error {
	var keys []string
	err := s.store.ListFlat(ctx, s.prefix, func(p backend.Page) error {
		for _, o := range p.Objects {
			if !strings.HasSuffix(o.Key, "/") { // a folder, in some stores
				keys = append(keys, o.Key)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	// References are read after the listing: a snapshot listed was held
	// before it was made.
	used := make(map[string]bool)
	if s.cfg.Referenced != nil {
		for _, k := range s.cfg.Referenced() {
			used[k] = true
		}
	}
	s.mu.Lock()
	if !final {
		for k := range s.held {
			used[k] = true
		}
	}
	var doomed []string
	suspects := make(map[string]bool)
	for _, k := range keys {
		switch {
		case used[k]:
		case final || s.suspects[k]:
			doomed = append(doomed, k)
		default:
			suspects[k] = true
		}
	}
	s.suspects = suspects
	if len(keys) > 0 {
		s.made = true
	}
	s.mu.Unlock()
	for _, k := range doomed {
		if err := s.Delete(ctx, k); err != nil {
			return err
		}
	}
	if len(doomed) > 0 {
		s.log.Debug("deleted unused snapshots", "n", len(doomed))
	}
	return nil
}

// KeepSweeping sweeps until ctx ends: once soon after start (the leftovers
// of a crash), then every minute while this mount has made or found any.
func (s *Store) KeepSweeping(ctx context.Context) {
	t := time.NewTimer(firstSweep)
	defer t.Stop()
	swept := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		made := s.made
		s.mu.Unlock()
		if made || !swept {
			if err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
				s.log.Debug("sweep snapshots", "err", err)
			} else {
				swept = true
			}
		}
		t.Reset(sweepInterval)
	}
}
