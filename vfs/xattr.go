package vfs

import (
	"context"
	"syscall"
)

// The extended attributes every entry of the mount carries.
const (
	xattrState   = "user.nimbus.state"   // read-only: one of the state* values
	xattrPin     = "user.nimbus.pin"     // set to "1" or "0" to pin or unpin
	xattrControl = "user.nimbus.control" // read-only: the daemon's control socket
)

// Values of user.nimbus.state, as DESIGN.md defines them.
const (
	stateOnline    = "online"    // nothing of the content is on this machine
	statePartial   = "partial"   // some blocks are cached
	stateLocal     = "local"     // all of the content is cached
	statePinned    = "pinned"    // pinned, and all of it is here
	stateDirty     = "dirty"     // changed here, not uploaded yet
	stateUploading = "uploading" // its upload is running
	stateConflict  = "conflict"  // a conflicted copy made by this machine
)

// getxattr answers the Nimbus attributes of rel; state is computed only
// when asked.
func (f *FS) getxattr(rel, attr string, dest []byte, state func() string) (uint32, syscall.Errno) {
	var v string
	switch attr {
	case xattrState:
		v = state()
	case xattrPin:
		v = "0"
		if f.pinnedPath(rel) {
			v = "1"
		}
	case xattrControl:
		if f.cfg.ControlSocket == "" {
			return 0, syscall.ENODATA
		}
		v = f.cfg.ControlSocket
	default:
		return 0, syscall.ENODATA
	}
	if len(dest) == 0 {
		return uint32(len(v)), 0 // the caller asks for the size
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

// listxattr lists the attributes getxattr answers for every entry.
func listxattr(dest []byte) (uint32, syscall.Errno) {
	names := xattrState + "\x00" + xattrPin + "\x00" + xattrControl + "\x00"
	if len(dest) == 0 {
		return uint32(len(names)), 0
	}
	if len(dest) < len(names) {
		return uint32(len(names)), syscall.ERANGE
	}
	return uint32(copy(dest, names)), 0
}

// setxattr pins ("1") or unpins ("0") rel through user.nimbus.pin, as
// nimbus pin and unpin do; the other Nimbus attributes are read-only.
func (f *FS) setxattr(ctx context.Context, rel, attr string, data []byte) syscall.Errno {
	switch attr {
	case xattrPin:
	case xattrState, xattrControl:
		return syscall.EPERM
	default:
		return syscall.ENOTSUP
	}
	switch string(data) {
	case "1":
		return toErrno(f.log, "pin", f.Pin(ctx, rel))
	case "0":
		_, err := f.Unpin(rel)
		return toErrno(f.log, "unpin", err)
	}
	return syscall.EINVAL
}
