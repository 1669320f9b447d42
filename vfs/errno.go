package vfs

import (
	"context"
	"errors"
	"log/slog"
	"syscall"

	"github.com/nimbus-fs/nimbus/backend"
)

// errNameInvalid and errNameTooLong are returned for names the store cannot
// hold as keys, errNameReserved for names nimbus keeps for its own objects.
var (
	errNameInvalid = errors.New("name is not valid UTF-8")
	errNameTooLong = errors.New("key longer than 1024 bytes")
	// errSegmentTooLong: a name longer than NAME_MAX (statfs's namelen).
	errSegmentTooLong = errors.New("name longer than 255 bytes")
	errNameReserved   = errors.New("name is reserved for nimbus's own objects (.nimbus-attrs, .nimbus-snapshots, .nimbus-trash): choose another name")
)

// toErrno is the one place where errors become errnos. It logs the original
// error, because the errno alone says little.
func toErrno(log *slog.Logger, op string, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	switch {
	case errors.As(err, &errno):
		// Already an errno (from the local file system, say).
	case errors.Is(err, context.Canceled):
		errno = syscall.EINTR
	case errors.Is(err, backend.ErrNotFound):
		errno = syscall.ENOENT
	case errors.Is(err, backend.ErrPrecondition):
		errno = syscall.ESTALE
	case errors.Is(err, backend.ErrAccess):
		errno = syscall.EACCES
	case errors.Is(err, errNameTooLong), errors.Is(err, errSegmentTooLong):
		errno = syscall.ENAMETOOLONG
	case errors.Is(err, errNameInvalid), errors.Is(err, errNameReserved), errors.Is(err, backend.ErrInvalidKey):
		errno = syscall.EINVAL
	default:
		// Offline, timeouts, corrupt metadata, anything unknown.
		errno = syscall.EIO
	}
	level := slog.LevelWarn
	if errno == syscall.ENOENT || errno == syscall.EINTR {
		level = slog.LevelDebug
	}
	log.Log(context.Background(), level, "operation failed", "op", op, "errno", errno.Error(), "err", err)
	return errno
}
