package journal

// Restore: make an earlier version of a key current again (nimbus restore).

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nimbus-fs/nimbus/backend"
)

// Restore copies version Op.Version of Op.Key onto Op.Key server-side
// (backend.VersionCopier), conditioned on Base like PutFile: If-Match the
// version the user saw current, or If-None-Match when the key was deleted
// (an undelete). A failed precondition changes nothing: the key changed (or
// came back) meanwhile, so the op is dropped with a conflict saying so,
// unless what is there is this very restore (a replay after a crash). A
// version that no longer exists drops the op the same way. Restore takes no
// staged file: offline it waits in the journal like any other op.
//
// On a store without versions, a Restore brings a file back from the trash
// instead (see Op.Trash): Op.Src is its trash copy, expected at
// Op.SrcETag, copied server-side onto Key If-None-Match (never over a file
// that exists again), then deleted from the trash If-Match that ETag. A
// replay recognises a copy already made by its ETag (or content hash).
const Restore Kind = 16

// Conflict reasons of a Restore.
const (
	ReasonRestoreChanged = "not restored: the file changed since its versions were listed"
	ReasonRestoreExists  = "not restored: a file of that name exists again"
	ReasonRestoreGone    = "not restored: that version no longer exists"
)

func init() { kindNames[Restore] = "restore" }

// versionCopier is what a Restore needs of the store beyond Store.
type versionCopier interface {
	backend.VersionCopier
	StatVersion(ctx context.Context, key, id string) (backend.ObjectInfo, error)
}

func validateRestore(op Op) error {
	switch {
	case op.Version == "" && op.Src == "":
		return errors.New("restore needs a version ID or a trash copy")
	case op.Version != "" && op.Src != "":
		return errors.New("restore takes a version ID or a trash copy, not both")
	case op.Src != "" && (op.SrcETag == "" || op.Base.Exists):
		return errors.New("a restore from the trash needs the trash copy's ETag, and no existing file under its name")
	case strings.HasSuffix(op.Key, "/"):
		return errors.New("only a file can be restored, not a directory marker")
	}
	return nil
}

// restoreVersion runs a Restore (see the Kind).
func (j *Journal) restoreVersion(ctx context.Context, rec *record) (outcome, error) {
	if rec.Src != "" {
		return j.restoreFromTrash(ctx, rec)
	}
	vc, ok := j.store.(versionCopier)
	if !ok {
		return outcome{}, fmt.Errorf("%w: the store cannot restore versions", errLocal)
	}
	dropped := func(reason string) (outcome, error) {
		return outcome{dropped: true, conflict: &Conflict{Key: rec.Key, Time: j.now(), Reason: reason}, next: rec.Base}, nil
	}
	info, err := vc.CopyVersion(ctx, rec.Key, rec.Version, rec.Key, cond(rec.Base))
	switch {
	case err == nil:
		return outcome{info: info, next: base{Exists: true, ETag: info.ETag}}, nil
	case errors.Is(err, backend.ErrNotFound):
		return dropped(ReasonRestoreGone)
	case !errors.Is(err, backend.ErrPrecondition):
		return outcome{}, err
	}
	// Is what is there now this restore, done before a crash? A copy has
	// the version's ETag (when the store derives it from the content) or
	// its content hash. Either way the version's content is current, which
	// is all a restore asks for.
	ver, err := vc.StatVersion(ctx, rec.Key, rec.Version)
	if errors.Is(err, backend.ErrNotFound) {
		return dropped(ReasonRestoreGone)
	} else if err != nil {
		return outcome{}, err
	}
	cur, err := j.store.Stat(ctx, rec.Key)
	switch {
	case errors.Is(err, backend.ErrNotFound):
		// Deleted meanwhile: the user's view (a current version) is
		// gone too, which is a change like any other.
		return dropped(ReasonRestoreChanged)
	case err != nil:
		return outcome{}, err
	case cur.ETag == ver.ETag || (ver.Meta[shaMeta] != "" && cur.Meta[shaMeta] == ver.Meta[shaMeta]):
		return outcome{info: cur, next: base{Exists: true, ETag: cur.ETag}}, nil
	case !rec.Base.Exists:
		return dropped(ReasonRestoreExists)
	}
	return dropped(ReasonRestoreChanged)
}

// restoreFromTrash runs a Restore of a trash copy (see the Kind).
func (j *Journal) restoreFromTrash(ctx context.Context, rec *record) (outcome, error) {
	dropped := func(reason string) (outcome, error) {
		return outcome{dropped: true, conflict: &Conflict{Key: rec.Key, Time: j.now(), Reason: reason}, next: rec.Base}, nil
	}
	// done empties the trash copy once the file is back. A trash copy
	// replaced meanwhile (If-Match fails) is someone else's: it stays.
	done := func(info backend.ObjectInfo) (outcome, error) {
		err := j.store.Delete(ctx, rec.Src, rec.SrcETag)
		if err != nil && !errors.Is(err, backend.ErrPrecondition) && !errors.Is(err, backend.ErrNotFound) {
			return outcome{}, fmt.Errorf("remove the trash copy %q: %w", rec.Src, err)
		}
		return outcome{info: info, next: base{Exists: true, ETag: info.ETag}}, nil
	}
	info, err := j.store.Copy(ctx, rec.Src, rec.SrcETag, rec.Key, cond(rec.Base))
	switch {
	case err == nil:
		return done(info)
	case !errors.Is(err, backend.ErrPrecondition) && !errors.Is(err, backend.ErrNotFound):
		return outcome{}, err
	}
	// The file exists again, or the trash copy changed or is gone. Is
	// what is there this restore, done before a crash?
	var src *backend.ObjectInfo
	if s, err := j.store.Stat(ctx, rec.Src); err == nil {
		src = &s
	} else if !errors.Is(err, backend.ErrNotFound) {
		return outcome{}, err
	}
	cur, err := j.store.Stat(ctx, rec.Key)
	switch {
	case errors.Is(err, backend.ErrNotFound):
		// Absent, so the trash copy is what failed: gone, or replaced.
		return dropped(ReasonRestoreGone)
	case err != nil:
		return outcome{}, err
	case cur.ETag == rec.SrcETag || (src != nil && src.Meta[shaMeta] != "" && cur.Meta[shaMeta] == src.Meta[shaMeta]):
		return done(cur)
	}
	return dropped(ReasonRestoreExists)
}
