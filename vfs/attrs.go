package vfs

import (
	"strconv"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/nimbus-fs/nimbus/cache"
)

// POSIX attributes.
//
// What POSIX keeps and S3 does not (type, mode, owner, times, a device's
// number) travels as object metadata (attrMeta) on files, symlinks,
// special files and directory markers, and in the attribute index of the
// parent folder (backend/attrindex), which is what listings read. A symlink's
// target is its object's body (the layout of s3fs and gcsfuse); FIFOs,
// sockets and devices are empty objects typed by their mode.
//
// The mode is written in octal: the permission bits alone for a regular
// file (what older versions wrote and read), the whole st_mode otherwise.
// A file's mode 0 is written as "0": present means set.

// Object metadata names.
const (
	metaMTime = "nimbus-mtime" // modification time, Unix nanoseconds
	metaMode  = "nimbus-mode"  // st_mode (bits alone: a regular file), octal
	metaUID   = "nimbus-uid"   // owner, decimal
	metaGID   = "nimbus-gid"
	metaATime = "nimbus-atime" // Unix nanoseconds
	metaCTime = "nimbus-ctime" // Unix nanoseconds
	metaRdev  = "nimbus-rdev"  // a device's number, decimal

	// What s3fs writes: st_mode, uid and gid in decimal, mtime in seconds.
	s3fsMode  = "mode"
	s3fsUID   = "uid"
	s3fsGID   = "gid"
	s3fsMTime = "mtime"
	// gcsfuse marks a symlink either with its target in metadata (older
	// versions; the body is empty) or with this flag (the body is the
	// target).
	gcsfuseTarget  = "gcsfuse_symlink_target"
	gcsfuseSymlink = "goog-reserved-file-is-symlink"
)

// attrMeta is the object metadata that keeps e's attributes. e.MTime must
// be set.
func attrMeta(e cache.Entry) map[string]string {
	meta := map[string]string{metaMTime: strconv.FormatInt(e.MTime.UnixNano(), 10)}
	if e.Mode != 0 || e.Type() != syscall.S_IFREG {
		m := e.Type() | e.Mode&0o7777
		if e.Mode == 0 {
			m |= defaultPerm(e.Type())
		}
		if m&syscall.S_IFMT == syscall.S_IFREG {
			m &= 0o7777 // readable by older versions
		}
		meta[metaMode] = strconv.FormatUint(uint64(m), 8)
	}
	if e.Owner {
		meta[metaUID] = strconv.FormatUint(uint64(e.UID), 10)
		meta[metaGID] = strconv.FormatUint(uint64(e.GID), 10)
	}
	if !e.ATime.IsZero() {
		meta[metaATime] = strconv.FormatInt(e.ATime.UnixNano(), 10)
	}
	if !e.CTime.IsZero() {
		meta[metaCTime] = strconv.FormatInt(e.CTime.UnixNano(), 10)
	}
	if e.Rdev != 0 {
		meta[metaRdev] = strconv.FormatUint(uint64(e.Rdev), 10)
	}
	return meta
}

// attrsFromMeta sets e's attributes from object metadata that has them
// (written by attrMeta, here or on another machine, or by s3fs or
// gcsfuse).
func attrsFromMeta(meta map[string]string, e *cache.Entry) {
	if ns, err := strconv.ParseInt(meta[metaMTime], 10, 64); err == nil {
		e.MTime, e.Attrs = time.Unix(0, ns), true
	} else if s, err := strconv.ParseInt(meta[s3fsMTime], 10, 64); err == nil && meta[metaMode] == "" {
		e.MTime, e.Attrs = time.Unix(s, 0), true
	}
	if m, err := strconv.ParseUint(meta[metaMode], 8, 32); err == nil {
		setMode(e, uint32(m))
	} else if m, err := strconv.ParseUint(meta[s3fsMode], 10, 32); err == nil && m&syscall.S_IFMT != 0 {
		setMode(e, uint32(m))
	}
	uid, uerr := strconv.ParseUint(firstOf(meta, metaUID, s3fsUID), 10, 32)
	gid, gerr := strconv.ParseUint(firstOf(meta, metaGID, s3fsGID), 10, 32)
	if uerr == nil && gerr == nil {
		e.Owner, e.UID, e.GID, e.Attrs = true, uint32(uid), uint32(gid), true
	}
	if ns, err := strconv.ParseInt(meta[metaATime], 10, 64); err == nil {
		e.ATime, e.Attrs = time.Unix(0, ns), true
	}
	if ns, err := strconv.ParseInt(meta[metaCTime], 10, 64); err == nil {
		e.CTime, e.Attrs = time.Unix(0, ns), true
	}
	if d, err := strconv.ParseUint(meta[metaRdev], 10, 32); err == nil {
		e.Rdev, e.Attrs = uint32(d), true
	}
	if t := meta[gcsfuseTarget]; t != "" && !e.Dir {
		e.Mode, e.Target, e.Attrs = syscall.S_IFLNK|0o777, t, true
	} else if meta[gcsfuseSymlink] == "true" && !e.Dir {
		e.Mode, e.Attrs = syscall.S_IFLNK|0o777, true
	}
}

func firstOf(meta map[string]string, names ...string) string {
	for _, n := range names {
		if v, ok := meta[n]; ok {
			return v
		}
	}
	return ""
}

// setMode gives e the st_mode m (bits alone: a regular file), unless its
// type contradicts what e is (a folder).
func setMode(e *cache.Entry, m uint32) {
	if m&syscall.S_IFMT == 0 {
		m |= syscall.S_IFREG
	}
	if (m&syscall.S_IFMT == syscall.S_IFDIR) != e.Dir || !knownType(m) {
		return
	}
	e.Mode, e.Attrs = m, true
}

func knownType(m uint32) bool {
	switch m & syscall.S_IFMT {
	case syscall.S_IFREG, syscall.S_IFDIR, syscall.S_IFLNK, syscall.S_IFIFO, syscall.S_IFSOCK, syscall.S_IFCHR, syscall.S_IFBLK:
		return true
	}
	return false
}

// defaultPerm is the mode of an entry whose mode was never set.
func defaultPerm(typ uint32) uint32 {
	switch typ {
	case syscall.S_IFDIR:
		return 0o755
	case syscall.S_IFLNK:
		return 0o777
	}
	return 0o644
}

// isMetaOnly reports whether e is an object whose whole state is its
// metadata and a small body: a symlink or a special file.
func isMetaOnly(e cache.Entry) bool {
	switch e.Type() {
	case syscall.S_IFREG, syscall.S_IFDIR:
		return false
	}
	return true
}

// fillAttr describes an entry: nlink is 1 (folders: see fillDirAttr).
func (f *FS) fillAttr(e cache.Entry, out *fuse.Attr) {
	typ := e.Type()
	perm := defaultPerm(typ)
	if e.Mode != 0 {
		perm = e.Mode & 0o7777
	}
	out.Mode = typ | perm
	out.Nlink = 1
	out.Size = uint64(e.Size)
	if typ == syscall.S_IFLNK && e.Target != "" {
		out.Size = uint64(len(e.Target))
	}
	if typ == syscall.S_IFDIR {
		out.Size = 4096
	}
	out.Blocks = (out.Size + 511) / 512
	out.Rdev = e.Rdev
	out.Uid, out.Gid = f.uid, f.gid
	if e.Owner {
		out.Uid, out.Gid = e.UID, e.GID
	}
	out.Blksize = 1 << 20
	mtime := e.MTime
	if mtime.IsZero() {
		mtime = f.start
	}
	atime, ctime := e.ATime, e.CTime
	if atime.IsZero() {
		atime = mtime
	}
	if ctime.IsZero() {
		ctime = mtime
	}
	out.SetTimes(&atime, &mtime, &ctime)
}

// fillDirAttr describes the folder at path, whose entry is e: its link
// count is 2 and one per subfolder known.
func (f *FS) fillDirAttr(path string, e cache.Entry, out *fuse.Attr) {
	e.Dir = true
	f.fillAttr(e, out)
	out.Nlink = 2
	if n, err := f.cfg.Tree.Subdirs(path); err != nil {
		f.log.Debug("count subfolders", "dir", path, "err", err)
	} else {
		out.Nlink += uint32(n)
	}
}

// fillFileAttr describes a file, symlink or special file from its entry.
func (f *FS) fillFileAttr(e cache.Entry, out *fuse.Attr) { f.fillAttr(e, out) }

// newOwner is the owner of what the caller of ctx creates in a folder of
// entry parent: the caller, and the folder's group if it is setgid. It is
// stored only when it is not the mounting user, who is the default.
func (f *FS) newOwner(caller *fuse.Caller, parent cache.Entry, e *cache.Entry) {
	uid, gid := f.uid, f.gid
	if caller != nil {
		uid, gid = caller.Uid, caller.Gid
	}
	if parent.Mode&syscall.S_ISGID != 0 {
		gid = f.gid
		if parent.Owner {
			gid = parent.GID
		}
	}
	if uid != f.uid || gid != f.gid {
		e.Owner, e.UID, e.GID = true, uid, gid
	}
}
