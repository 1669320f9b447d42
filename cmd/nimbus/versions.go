package main

// The mount's side of nimbus share, versions, restore and deleted: what the
// control socket runs for them. The CLI side is versions_cmd.go.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/attrindex"
	"github.com/nimbus-fs/nimbus/backend/snapshots"
	"github.com/nimbus-fs/nimbus/backend/trash"
	"github.com/nimbus-fs/nimbus/journal"
)

// Arguments and results of the version requests.
type (
	shareArgs struct {
		Expires time.Duration `json:"expires"`
		Sync    bool          `json:"sync,omitempty"`
	}
	shareResult struct {
		URL     string    `json:"url"`
		Expires time.Time `json:"expires"`
	}
	versionEntry struct {
		ID       string    `json:"id"`
		Modified time.Time `json:"modified"`
		Size     int64     `json:"size"`
		Current  bool      `json:"current"`
		Deleted  bool      `json:"deleted"`
	}
	restoreArgs struct {
		Version string `json:"version,omitempty"`
	}
	restoreResult struct {
		// Restored are the paths (below the mount root) brought back or
		// restored; Refused those the store refused, with why.
		Restored []string          `json:"restored"`
		Refused  map[string]string `json:"refused,omitempty"`
		// Queued: the store is offline; the restore is journaled and
		// runs once it is back.
		Queued bool `json:"queued,omitempty"`
	}
	deletedEntry struct {
		Path    string    `json:"path"`
		Deleted time.Time `json:"deleted"`
		Version string    `json:"version,omitempty"`
		Size    int64     `json:"size"`
	}
)

// Bounds of the version requests. A restore waits for its ops while the
// CLI waits (the control connection allows two minutes).
const (
	versionsTimeout = time.Minute
	restoreWait     = 90 * time.Second
	shareSyncWait   = 10 * time.Minute
)

// dispatchVersions runs the version requests; ok is false for any other.
func (m *mountState) dispatchVersions(req controlRequest) (result any, ok bool, err error) {
	switch req.Op {
	case "share":
		var a shareArgs
		if err := decodeArgs(req, &a); err != nil {
			return nil, true, err
		}
		result, err = m.share(req.Path, a)
	case "versions":
		result, err = m.versions(req.Path)
	case "restore":
		var a restoreArgs
		if err := decodeArgs(req, &a); err != nil {
			return nil, true, err
		}
		result, err = m.restore(req.Path, a)
	case "deleted":
		result, err = m.deleted(req.Path)
	default:
		return nil, false, nil
	}
	return result, true, err
}

func decodeArgs(req controlRequest, v any) error {
	if len(req.Args) == 0 {
		return nil
	}
	if err := json.Unmarshal(req.Args, v); err != nil {
		return fmt.Errorf("bad %s request: %w", req.Op, err)
	}
	return nil
}

// keyOf returns the key and the path below the root of an absolute path in
// the mount.
func (m *mountState) keyOf(abs string) (key, rel string, err error) {
	rel, err = m.relPath(abs)
	if err != nil {
		return "", "", err
	}
	return m.opts.remote.prefix + rel, rel, nil
}

// share makes a download link for a file whose content is in the store.
func (m *mountState) share(abs string, a shareArgs) (shareResult, error) {
	key, rel, err := m.keyOf(abs)
	if err != nil {
		return shareResult{}, err
	}
	if rel == "" {
		return shareResult{}, errors.New("share makes a link to one file, not to the mount's root")
	}
	if a.Expires <= 0 || a.Expires > backend.MaxPresignExpiry {
		return shareResult{}, fmt.Errorf("--expires %v: %w", a.Expires, backend.ErrPresignExpiry)
	}
	if p, pending := m.journal.Pending(key); pending {
		if !a.Sync {
			return shareResult{}, fmt.Errorf("%s has changes not uploaded yet, so a link would give the old content or none: run nimbus share --sync to upload it first", abs)
		}
		ctx, cancel := context.WithTimeout(context.Background(), shareSyncWait)
		defer cancel()
		if err := m.waitOp(ctx, key, p.Seq); err != nil {
			return shareResult{}, fmt.Errorf("%s is not uploaded yet (%w): see nimbus status", abs, err)
		}
		if _, still := m.journal.Pending(key); still {
			return shareResult{}, fmt.Errorf("%s was changed again while uploading: run nimbus share --sync again", abs)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), versionsTimeout)
	defer cancel()
	info, err := m.health.Stat(ctx, key)
	switch {
	case errors.Is(err, backend.ErrNotFound):
		if m.isDir(rel) {
			return shareResult{}, fmt.Errorf("%s is a folder: a link shares one file", abs)
		}
		return shareResult{}, fmt.Errorf("%s is not in the bucket (deleted, or not uploaded yet)", abs)
	case errors.Is(err, backend.ErrOffline):
		return shareResult{}, fmt.Errorf("the store is offline: a link needs the file to be in the store (%w)", err)
	case err != nil:
		return shareResult{}, err
	}
	expires := time.Now().Add(a.Expires)
	url, err := m.health.PresignGet(ctx, info.Key, a.Expires)
	if err != nil {
		return shareResult{}, err
	}
	// The URL is a bearer credential: it goes to the CLI only, never
	// to the log.
	m.log.Info("share link made", "key", key, "expires", expires.UTC().Format(time.RFC3339))
	return shareResult{URL: url, Expires: expires}, nil
}

// isDir reports whether the tree knows rel as a folder.
func (m *mountState) isDir(rel string) bool {
	dir, name := path.Split(rel)
	e, ok, err := m.tree.Lookup(strings.TrimSuffix(dir, "/"), name)
	return err == nil && ok && e.Dir
}

// needVersioning fails, in one line with the fix, unless the bucket keeps
// versions.
func (m *mountState) needVersioning(ctx context.Context) error {
	if m.opts.remote.scheme != "s3" {
		return errors.New("a dir: remote keeps no versions, only deleted files: see nimbus deleted and nimbus restore PATH")
	}
	on, err := m.health.Versioning(ctx)
	if err != nil {
		return versioningUnknown(err)
	}
	if !on {
		return fmt.Errorf("versioning is off on bucket %q, so there are no earlier versions: turn it on with: %s", m.opts.remote.bucket, m.versioningCommand())
	}
	return nil
}

// versioningUnknown is the error of a failed question whether the bucket
// keeps versions, which every version command asks first.
func versioningUnknown(err error) error {
	if errors.Is(err, backend.ErrOffline) {
		return fmt.Errorf("the store is offline, and this needs it: try again once it is back (see nimbus status): %w", err)
	}
	return fmt.Errorf("cannot tell whether the bucket keeps versions (%w): check the credentials' permissions (s3:GetBucketVersioning)", err)
}

// versioningCommand is the command that turns versioning on.
func (m *mountState) versioningCommand() string {
	cmd := "aws s3api put-bucket-versioning --bucket " + m.opts.remote.bucket + " --versioning-configuration Status=Enabled"
	if m.opts.endpoint != "" {
		cmd += " --endpoint-url " + m.opts.endpoint
	}
	return cmd
}

// versions lists a file's versions, newest first.
func (m *mountState) versions(abs string) ([]versionEntry, error) {
	key, rel, err := m.keyOf(abs)
	if err != nil {
		return nil, err
	}
	if rel == "" {
		return nil, errors.New("versions lists the versions of one file, not of the mount's root: give a file's path")
	}
	ctx, cancel := context.WithTimeout(context.Background(), versionsTimeout)
	defer cancel()
	if err := m.needVersioning(ctx); err != nil {
		return nil, err
	}
	out := []versionEntry{}
	err = m.health.ListVersions(ctx, key, func(page []backend.Version) error {
		for _, v := range page {
			if v.Key == key {
				out = append(out, versionEntry{ID: v.ID, Modified: v.ModTime, Size: v.Size, Current: v.Current, Deleted: v.Deleted})
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		switch {
		case m.isDir(rel):
			return nil, fmt.Errorf("%s is a folder: versions are kept per file, give a file in it", abs)
		case m.opts.store.at != "":
			return nil, fmt.Errorf("%s has no version written by %s, the time of this --at view: run nimbus versions on it in a live mount to see later ones", abs, m.atString())
		}
		return nil, fmt.Errorf("%s has no versions in the bucket (not uploaded yet? see nimbus status)", abs)
	}
	return out, nil
}

// restorable is a deleted key and the version that brings it back.
type restorable struct {
	key, version string
	size         int64
	deleted      time.Time
}

// deletedUnder lists the keys at or under key (key itself, or key+"/…";
// everything for "") whose current version is a delete marker, with the
// newest version before the delete.
func (m *mountState) deletedUnder(ctx context.Context, key string) ([]restorable, error) {
	var out []restorable
	var cur string // the key whose versions are being read
	var marker *backend.Version
	err := m.health.ListVersions(ctx, key, func(page []backend.Version) error {
		for _, v := range page {
			if key != "" && v.Key != key && !strings.HasPrefix(v.Key, strings.TrimSuffix(key, "/")+"/") {
				continue
			}
			if v.Key != cur {
				cur, marker = v.Key, nil
				if v.Deleted && v.Current {
					mk := v
					marker = &mk
				}
				continue
			}
			if marker != nil && !v.Deleted {
				out = append(out, restorable{key: v.Key, version: v.ID, size: v.Size, deleted: marker.ModTime})
				marker = nil
			}
		}
		return nil
	})
	out = slices.DeleteFunc(out, func(r restorable) bool { return m.reservedKey(r.key) })
	return out, err
}

// reservedKey reports whether key is one of nimbus's own objects.
func (m *mountState) reservedKey(key string) bool {
	for _, seg := range strings.Split(strings.TrimPrefix(key, m.opts.remote.prefix), "/") {
		switch seg {
		case attrindex.Name, snapshots.Dir, trash.Dir:
			return true
		}
	}
	return false
}

// restore makes version a.Version of a file current again, or without a
// version brings back what was deleted at the path (a file, or everything
// under a folder).
func (m *mountState) restore(abs string, a restoreArgs) (restoreResult, error) {
	key, rel, err := m.keyOf(abs)
	if err != nil {
		return restoreResult{}, err
	}
	if m.opts.store.at != "" {
		return restoreResult{}, m.restoreInView(key, rel, a.Version)
	}
	if a.Version != "" {
		return m.restoreVersion(abs, key, rel, a.Version)
	}
	return m.undelete(abs, key, rel)
}

func (m *mountState) restoreVersion(abs, key, rel, version string) (restoreResult, error) {
	if rel == "" {
		return restoreResult{}, errors.New("restore --version restores one file, not the mount's root: give a file's path")
	}
	ctx, cancel := context.WithTimeout(context.Background(), versionsTimeout)
	defer cancel()
	op := journal.Op{Kind: journal.Restore, Key: key, Version: version}
	// Offline, the checks wait: the journal keeps the restore until the
	// store is back (a version that is gone by then is reported as a
	// conflict).
	switch err := m.needVersioning(ctx); {
	case errors.Is(err, backend.ErrOffline):
	case err != nil:
		return restoreResult{}, err
	default:
		_, err := m.health.StatVersion(ctx, key, version)
		if errors.Is(err, backend.ErrNotFound) {
			return restoreResult{}, fmt.Errorf("%s has no version %q: see nimbus versions %s", abs, version, abs)
		} else if err != nil && !errors.Is(err, backend.ErrOffline) {
			return restoreResult{}, err
		}
	}
	op.Base = m.seenBase(ctx, key, rel)
	return m.commitRestores(abs, []journal.Op{op})
}

// atString is the time an --at mount shows, for messages.
func (m *mountState) atString() string {
	return m.opts.store.atTime.UTC().Format(time.RFC3339)
}

// restoreInView is the error of nimbus restore [--version version] in an
// --at mount, which is read-only: it names the command to run on a
// writable mount of the same remote, with the version asked for, or else
// the version this view shows when rel is a file it shows.
func (m *mountState) restoreInView(key, rel, version string) error {
	remote := m.opts.remote.String()
	mount := "nimbus mount " + remote + " MNT"
	if m.opts.endpoint != "" {
		mount = "nimbus mount --endpoint " + m.opts.endpoint + " " + remote + " MNT"
	}
	where := fmt.Sprintf("the --at %s view is read-only: on a writable mount of %s (%s), run", m.atString(), remote, mount)
	target := "MNT/" + rel
	if rel == "" {
		target = "MNT"
	}
	if version != "" {
		return fmt.Errorf("%s: nimbus restore %s --version %s", where, target, version)
	}
	if id := m.shownVersion(key); id != "" {
		return fmt.Errorf("%s: nimbus restore %s --version %s (the version shown here)", where, target, id)
	}
	return fmt.Errorf("%s: nimbus restore %s [--version ID] (see nimbus versions there), or copy the files out of this view", where, target)
}

// shownVersion is the ID of the version of key an --at view shows, "" when
// it shows none (a folder, a file deleted or not written then) or the
// store cannot say.
func (m *mountState) shownVersion(key string) string {
	ctx, cancel := context.WithTimeout(context.Background(), versionsTimeout)
	defer cancel()
	var id string
	err := m.health.ListVersions(ctx, key, func(page []backend.Version) error {
		for _, v := range page {
			if v.Key == key && v.Current && !v.Deleted {
				id = v.ID
			}
		}
		return nil
	})
	if err != nil {
		m.log.Debug("restore in an --at view: the version shown is unknown", "key", key, "err", err)
		return ""
	}
	return id
}

// seenBase is the version of key the user sees: the one the restore is
// conditioned on (If-Match), or none (If-None-Match) for a deleted file.
func (m *mountState) seenBase(ctx context.Context, key, rel string) journal.Base {
	dir, name := path.Split(rel)
	if e, ok, err := m.tree.Lookup(strings.TrimSuffix(dir, "/"), name); err == nil && ok && !e.Dir && e.ETag != "" {
		return journal.Base{Exists: true, ETag: e.ETag}
	}
	if info, err := m.health.Stat(ctx, key); err == nil {
		return journal.Base{Exists: true, ETag: info.ETag}
	}
	return journal.Base{}
}

// versioned reports whether the store keeps versions, so that undelete
// uses the delete markers, and otherwise the trash.
func (m *mountState) versioned(ctx context.Context) (bool, error) {
	if m.opts.remote.scheme != "s3" {
		return false, nil
	}
	on, err := m.health.Versioning(ctx)
	if err != nil {
		return false, versioningUnknown(err)
	}
	return on, nil
}

func (m *mountState) undelete(abs, key, rel string) (restoreResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), versionsTimeout)
	defer cancel()
	if !m.health.Online() {
		return restoreResult{}, errors.New("the store is offline: undelete needs it to find what was deleted; try again once it is back")
	}
	if on, err := m.versioned(ctx); err != nil {
		return restoreResult{}, err
	} else if !on {
		return m.undeleteFromTrash(ctx, abs, key, rel)
	}
	if rel != "" {
		if _, err := m.health.Stat(ctx, key); err == nil {
			return restoreResult{}, fmt.Errorf("%s exists: give --version ID to restore an earlier version (see nimbus versions %s)", abs, abs)
		}
	}
	prefix := key
	if rel == "" {
		prefix = m.opts.remote.prefix
	}
	found, err := m.deletedUnder(ctx, prefix)
	if err != nil {
		return restoreResult{}, err
	}
	if len(found) == 0 {
		return restoreResult{}, fmt.Errorf("nothing deleted to restore at %s: see nimbus deleted on its folder", abs)
	}
	var ops []journal.Op
	for i, r := range found {
		// Never over a file that exists again: If-None-Match (no base).
		op := journal.Op{Kind: journal.Restore, Key: r.key, Version: r.version, Group: i}
		if strings.HasSuffix(r.key, "/") {
			op = journal.Op{Kind: journal.PutMarker, Key: r.key, Group: i}
		}
		ops = append(ops, op)
	}
	return m.commitRestores(abs, ops)
}

// undeleteFromTrash brings back, on a store without versions, the newest
// trash copy of the file at rel or of each file under the folder rel.
func (m *mountState) undeleteFromTrash(ctx context.Context, abs, key, rel string) (restoreResult, error) {
	if rel != "" {
		if _, err := m.health.Stat(ctx, key); err == nil {
			return restoreResult{}, fmt.Errorf("%s exists again, and a restore never overwrites it: move it away first to bring back the deleted one", abs)
		}
	}
	found, err := trash.List(ctx, m.health, m.opts.remote.prefix, rel)
	if err != nil {
		return restoreResult{}, err
	}
	found = trash.Newest(found)
	if len(found) == 0 {
		return restoreResult{}, fmt.Errorf("nothing deleted to restore at %s: see nimbus deleted on its folder", abs)
	}
	ops := make([]journal.Op, len(found))
	for i, e := range found {
		// Never over a file that exists again: If-None-Match (no base).
		ops[i] = journal.Op{Kind: journal.Restore, Key: m.opts.remote.prefix + e.Path, Src: e.Key, SrcETag: e.ETag, Group: i}
	}
	return m.commitRestores(abs, ops)
}

// restoreReasons are the conflict reasons of a refused restore.
var restoreReasons = []string{journal.ReasonRestoreChanged, journal.ReasonRestoreExists, journal.ReasonRestoreGone}

// commitRestores journals ops and, while the store is reachable, waits for
// them and reports what each did.
func (m *mountState) commitRestores(abs string, ops []journal.Op) (restoreResult, error) {
	start := time.Now()
	if err := m.journal.Commit(ops...); err != nil {
		return restoreResult{}, fmt.Errorf("journal the restore: %w", err)
	}
	seqs := make([]uint64, len(ops))
	for i, op := range ops {
		p, _ := m.journal.Pending(op.Key)
		seqs[i] = p.Seq
	}
	var res restoreResult
	if !m.health.Online() {
		res.Queued = true
		return res, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), restoreWait)
	defer cancel()
	for i, op := range ops {
		if err := m.waitOp(ctx, op.Key, seqs[i]); err != nil {
			res.Queued = true
			return res, nil // journaled: it goes on in the background
		}
	}
	refused := map[string]string{}
	for _, c := range m.journal.Conflicts() {
		if !c.Time.Before(start.Add(-time.Second)) && slices.Contains(restoreReasons, c.Reason) {
			refused[c.Key] = c.Reason
		}
	}
	stale := map[string]bool{}
	for _, op := range ops {
		rel := strings.TrimPrefix(op.Key, m.opts.remote.prefix)
		if why, ok := refused[op.Key]; ok {
			if res.Refused == nil {
				res.Refused = map[string]string{}
			}
			res.Refused[rel] = why
			continue
		}
		res.Restored = append(res.Restored, rel)
		if op.Base.Exists {
			continue // a version restore: Applied updated the entry
		}
		// A folder brought back may be unknown to its parent's listing.
		for d := path.Dir(strings.TrimSuffix(rel, "/")); ; d = path.Dir(d) {
			if d == "." {
				d = ""
			}
			stale[d] = true
			if d == "" {
				break
			}
		}
	}
	for d := range stale {
		if err := m.tree.MarkStale(d); err != nil {
			m.log.Warn("mark stale after restore", "dir", d, "err", err)
		}
	}
	if len(res.Restored) == 0 && len(ops) == 1 {
		for _, why := range res.Refused {
			if ops[0].Src != "" { // from the trash
				return res, fmt.Errorf("%s: %s; nothing was changed (see nimbus deleted on its folder)", abs, why)
			}
			return res, fmt.Errorf("%s: %s; nothing was changed (see nimbus versions %s)", abs, why, abs)
		}
	}
	return res, nil
}

// waitOp waits until the op seq on key is no longer pending.
func (m *mountState) waitOp(ctx context.Context, key string, seq uint64) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if p, ok := m.journal.PendingBefore(key, seq+1); !ok || p.Seq != seq {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// deleted lists what can be restored under a folder.
func (m *mountState) deleted(abs string) ([]deletedEntry, error) {
	_, rel, err := m.keyOf(abs)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), versionsTimeout)
	defer cancel()
	if on, err := m.versioned(ctx); err != nil {
		return nil, err
	} else if !on {
		return m.deletedInTrash(ctx, rel)
	}
	prefix := m.opts.remote.prefix
	if rel != "" {
		prefix += rel + "/"
	}
	found, err := m.deletedUnder(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := []deletedEntry{}
	for _, r := range found {
		out = append(out, deletedEntry{Path: strings.TrimPrefix(r.key, m.opts.remote.prefix), Deleted: r.deleted, Version: r.version, Size: r.size})
	}
	return out, nil
}

// deletedInTrash lists the trash copies under rel, on a store without
// versions: every one, newest first for each path.
func (m *mountState) deletedInTrash(ctx context.Context, rel string) ([]deletedEntry, error) {
	found, err := trash.List(ctx, m.health, m.opts.remote.prefix, rel)
	if err != nil {
		return nil, err
	}
	out := []deletedEntry{}
	for _, e := range found {
		out = append(out, deletedEntry{Path: e.Path, Deleted: e.Deleted, Size: e.Size})
	}
	return out, nil
}
