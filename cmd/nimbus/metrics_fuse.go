package main

import (
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// The FUSE operations fuseMetrics measures: each calls the wrapped
// RawFileSystem and records its time and status under the operation's
// name. Forget, Init, OnUnmount and ReleaseDir answer nothing and pass
// through.

func (f *fuseMetrics) Lookup(cancel <-chan struct{}, header *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Lookup(cancel, header, name, out)
	f.observe("lookup", start, st)
	return st
}

func (f *fuseMetrics) GetAttr(cancel <-chan struct{}, input *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.GetAttr(cancel, input, out)
	f.observe("getattr", start, st)
	return st
}

func (f *fuseMetrics) SetAttr(cancel <-chan struct{}, input *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.SetAttr(cancel, input, out)
	f.observe("setattr", start, st)
	return st
}

func (f *fuseMetrics) Mknod(cancel <-chan struct{}, input *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Mknod(cancel, input, name, out)
	f.observe("mknod", start, st)
	return st
}

func (f *fuseMetrics) Mkdir(cancel <-chan struct{}, input *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Mkdir(cancel, input, name, out)
	f.observe("mkdir", start, st)
	return st
}

func (f *fuseMetrics) Unlink(cancel <-chan struct{}, header *fuse.InHeader, name string) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Unlink(cancel, header, name)
	f.observe("unlink", start, st)
	return st
}

func (f *fuseMetrics) Rmdir(cancel <-chan struct{}, header *fuse.InHeader, name string) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Rmdir(cancel, header, name)
	f.observe("rmdir", start, st)
	return st
}

func (f *fuseMetrics) Rename(cancel <-chan struct{}, input *fuse.RenameIn, oldName string, newName string) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Rename(cancel, input, oldName, newName)
	f.observe("rename", start, st)
	return st
}

func (f *fuseMetrics) Link(cancel <-chan struct{}, input *fuse.LinkIn, filename string, out *fuse.EntryOut) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Link(cancel, input, filename, out)
	f.observe("link", start, st)
	return st
}

func (f *fuseMetrics) Symlink(cancel <-chan struct{}, header *fuse.InHeader, pointedTo string, linkName string, out *fuse.EntryOut) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Symlink(cancel, header, pointedTo, linkName, out)
	f.observe("symlink", start, st)
	return st
}

func (f *fuseMetrics) Readlink(cancel <-chan struct{}, header *fuse.InHeader) ([]byte, fuse.Status) {
	start := time.Now()
	v, st := f.RawFileSystem.Readlink(cancel, header)
	f.observe("readlink", start, st)
	return v, st
}

func (f *fuseMetrics) Access(cancel <-chan struct{}, input *fuse.AccessIn) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Access(cancel, input)
	f.observe("access", start, st)
	return st
}

func (f *fuseMetrics) GetXAttr(cancel <-chan struct{}, header *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	start := time.Now()
	v, st := f.RawFileSystem.GetXAttr(cancel, header, attr, dest)
	f.observe("getxattr", start, st)
	return v, st
}

func (f *fuseMetrics) ListXAttr(cancel <-chan struct{}, header *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	start := time.Now()
	v, st := f.RawFileSystem.ListXAttr(cancel, header, dest)
	f.observe("listxattr", start, st)
	return v, st
}

func (f *fuseMetrics) SetXAttr(cancel <-chan struct{}, input *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.SetXAttr(cancel, input, attr, data)
	f.observe("setxattr", start, st)
	return st
}

func (f *fuseMetrics) RemoveXAttr(cancel <-chan struct{}, header *fuse.InHeader, attr string) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.RemoveXAttr(cancel, header, attr)
	f.observe("removexattr", start, st)
	return st
}

func (f *fuseMetrics) Create(cancel <-chan struct{}, input *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Create(cancel, input, name, out)
	f.observe("create", start, st)
	return st
}

func (f *fuseMetrics) Tmpfile(cancel <-chan struct{}, input *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Tmpfile(cancel, input, out)
	f.observe("tmpfile", start, st)
	return st
}

func (f *fuseMetrics) Open(cancel <-chan struct{}, input *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Open(cancel, input, out)
	f.observe("open", start, st)
	return st
}

func (f *fuseMetrics) Read(cancel <-chan struct{}, input *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	start := time.Now()
	v, st := f.RawFileSystem.Read(cancel, input, buf)
	f.observe("read", start, st)
	return v, st
}

func (f *fuseMetrics) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Lseek(cancel, in, out)
	f.observe("lseek", start, st)
	return st
}

func (f *fuseMetrics) GetLk(cancel <-chan struct{}, input *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.GetLk(cancel, input, out)
	f.observe("getlk", start, st)
	return st
}

func (f *fuseMetrics) SetLk(cancel <-chan struct{}, input *fuse.LkIn) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.SetLk(cancel, input)
	f.observe("setlk", start, st)
	return st
}

func (f *fuseMetrics) SetLkw(cancel <-chan struct{}, input *fuse.LkIn) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.SetLkw(cancel, input)
	f.observe("setlkw", start, st)
	return st
}

func (f *fuseMetrics) Release(cancel <-chan struct{}, input *fuse.ReleaseIn) {
	start := time.Now()
	f.RawFileSystem.Release(cancel, input)
	f.observe("release", start, fuse.OK)
}

func (f *fuseMetrics) Write(cancel <-chan struct{}, input *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	start := time.Now()
	v, st := f.RawFileSystem.Write(cancel, input, data)
	f.observe("write", start, st)
	return v, st
}

func (f *fuseMetrics) Writev(cancel <-chan struct{}, input *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	start := time.Now()
	v, st := f.RawFileSystem.Writev(cancel, input, data)
	f.observe("writev", start, st)
	return v, st
}

func (f *fuseMetrics) CopyFileRange(cancel <-chan struct{}, input *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	start := time.Now()
	v, st := f.RawFileSystem.CopyFileRange(cancel, input)
	f.observe("copyfilerange", start, st)
	return v, st
}

func (f *fuseMetrics) Ioctl(cancel <-chan struct{}, input *fuse.IoctlIn, inbuf []byte, output *fuse.IoctlOut, outbuf []byte) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Ioctl(cancel, input, inbuf, output, outbuf)
	f.observe("ioctl", start, st)
	return st
}

func (f *fuseMetrics) Flush(cancel <-chan struct{}, input *fuse.FlushIn) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Flush(cancel, input)
	f.observe("flush", start, st)
	return st
}

func (f *fuseMetrics) Fsync(cancel <-chan struct{}, input *fuse.FsyncIn) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Fsync(cancel, input)
	f.observe("fsync", start, st)
	return st
}

func (f *fuseMetrics) Fallocate(cancel <-chan struct{}, input *fuse.FallocateIn) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Fallocate(cancel, input)
	f.observe("fallocate", start, st)
	return st
}

func (f *fuseMetrics) OpenDir(cancel <-chan struct{}, input *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.OpenDir(cancel, input, out)
	f.observe("opendir", start, st)
	return st
}

func (f *fuseMetrics) ReadDir(cancel <-chan struct{}, input *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.ReadDir(cancel, input, out)
	f.observe("readdir", start, st)
	return st
}

func (f *fuseMetrics) ReadDirPlus(cancel <-chan struct{}, input *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.ReadDirPlus(cancel, input, out)
	f.observe("readdirplus", start, st)
	return st
}

func (f *fuseMetrics) FsyncDir(cancel <-chan struct{}, input *fuse.FsyncIn) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.FsyncDir(cancel, input)
	f.observe("fsyncdir", start, st)
	return st
}

func (f *fuseMetrics) StatFs(cancel <-chan struct{}, input *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.StatFs(cancel, input, out)
	f.observe("statfs", start, st)
	return st
}

func (f *fuseMetrics) Statx(cancel <-chan struct{}, input *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	start := time.Now()
	st := f.RawFileSystem.Statx(cancel, input, out)
	f.observe("statx", start, st)
	return st
}
