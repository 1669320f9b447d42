package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRandomizedDifferential applies one random sequence of file operations
// both to the mount and to a plain local folder, the reference, and
// requires the same outcome from each: the same bytes and sizes, and the
// same errno when an operation fails. The whole trees are compared every
// 100 operations; at the end the bucket after nimbus sync, and a fresh
// mount on another cache folder, must equal the reference too.
//
// NIMBUS_DIFF_SEED replays a run; NIMBUS_DIFF_OPS sets the number of
// operations (default 2000; CI runs the default, more on demand);
// NIMBUS_DIFF_DIR_RENAMES=0 leaves out folder renames.
func TestRandomizedDifferential(t *testing.T) {
	runDifferential(t, testEnvCount(t, "NIMBUS_DIFF_OPS", 2000), nil)
}

// TestRandomizedDifferentialPartial is the same with every file edited
// partially when it is not cached (--partial-edit-min 1): the working copy
// lacks what was not written, and reads, truncates, renames and uploads
// must still see the whole content. NIMBUS_DIFF_PARTIAL_OPS sets the
// number of operations (default 1000).
func TestRandomizedDifferentialPartial(t *testing.T) {
	runDifferential(t, testEnvCount(t, "NIMBUS_DIFF_PARTIAL_OPS", 1000), []string{"--partial-edit-min", "1"})
}

func runDifferential(t *testing.T, nOps int, mountArgs []string) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("NIMBUS_DIFF_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("NIMBUS_DIFF_SEED=%q: %v", s, err)
		}
		seed = v
	}
	dirRenames := os.Getenv("NIMBUS_DIFF_DIR_RENAMES") != "0"
	renames := "1"
	if !dirRenames {
		renames = "0"
	}
	t.Logf("seed %d, %d ops (replay with NIMBUS_DIFF_SEED=%d NIMBUS_DIFF_OPS=%d NIMBUS_DIFF_DIR_RENAMES=%s)",
		seed, nOps, seed, nOps, renames)

	e := newEnv(t)
	m := e.mount(mountOpt{args: mountArgs})
	d := &diffRun{
		dirRenames: dirRenames,
		t:          t,
		e:          e,
		rng:        rand.New(rand.NewPCG(seed, seed^0xd1ff)),
		mnt:        m.dir,
		ref:        t.TempDir(),
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("NIMBUS_DIFF_SEED=%d: the %d ops so far:\n%s", seed, len(d.ops), strings.Join(d.ops, "\n"))
		}
	})

	start := time.Now()
	for i := range nOps {
		op := d.step(i)
		if t.Failed() {
			d.diagnose(op)
			t.FailNow() // later ops would only repeat the divergence
		}
		if (i+1)%100 == 0 {
			d.compareTrees(m.dir, fmt.Sprintf("after op %d", i))
			if t.Failed() {
				t.FailNow()
			}
		}
	}
	d.compareTrees(m.dir, "at the end")
	counts := make([]string, 0, len(d.counts))
	for k, v := range d.counts {
		counts = append(counts, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(counts)
	t.Logf("%d ops in %v: %s", nOps, time.Since(start).Round(time.Millisecond), strings.Join(counts, " "))
	if t.Failed() {
		t.FailNow()
	}

	m.sync(3 * time.Minute)
	sameTree(t, localTree(t, d.ref), e.objects())
	m.unmount()
	fresh := e.mount(mountOpt{args: mountArgs})
	d.compareTrees(fresh.dir, "on a fresh mount with a new cache folder")
}

// diffRun is one differential run: the mount, the reference, and the log
// of the ops applied so far.
type diffRun struct {
	dirRenames bool // whether ops include folder renames
	t          *testing.T
	e          *env
	rng        *rand.Rand
	mnt        string
	ref        string
	ops        []string
	counts     map[string]int
}

// diffNames are few, so that names collide: an op often meets an existing
// file or folder of the same name.
var diffNames = []string{"a", "b", "c.txt", "d.bin", "e", "dir", "sub", "x y"}

// diffOp is one operation, applied to a root: it returns what it saw
// (bytes read, a listing) for comparison, and its error.
type diffOp struct {
	desc string
	kind string
	// paths to stat on both sides after the op.
	paths []string
	apply func(root string) ([]byte, error)
	// mustFail is the errno the reference must return, checked as an
	// explicit expectation (rmdir of a non-empty folder).
	mustFail syscall.Errno
}

// scan lists the reference: its files with their sizes, and its folders
// ("" is the root).
func (d *diffRun) scan() (files map[string]int64, dirs []string) {
	d.t.Helper()
	files = make(map[string]int64)
	dirs = []string{""}
	err := filepath.WalkDir(d.ref, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(d.ref, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		if de.IsDir() {
			dirs = append(dirs, rel)
			return nil
		}
		info, err := de.Info()
		if err != nil {
			return err
		}
		files[rel] = info.Size()
		return nil
	})
	if err != nil {
		d.t.Fatalf("scan the reference: %v", err)
	}
	return files, dirs
}

func (d *diffRun) pick(s []string) string { return s[d.rng.IntN(len(s))] }

// size draws a write size: mostly small, sometimes up to 1 MiB.
func (d *diffRun) size(total int64) int {
	if total > 8<<20 { // keep the tree small
		return d.rng.IntN(4 << 10)
	}
	switch p := d.rng.IntN(100); {
	case p < 8:
		return 0
	case p < 75:
		return 1 + d.rng.IntN(16<<10)
	case p < 92:
		return 16<<10 + d.rng.IntN(240<<10)
	default:
		return 256<<10 + d.rng.IntN(768<<10+1)
	}
}

// data makes n bytes named by a seed, so that the log can say which.
func (d *diffRun) data(n int) (pattern, []byte) {
	p := pattern{seed: d.rng.Uint64(), size: int64(n)}
	return p, p.bytes(0, p.size)
}

func diffDepth(p string) int {
	if p == "" {
		return 0
	}
	return strings.Count(p, "/") + 1
}

// next draws the next op from the state of the reference.
func (d *diffRun) next() diffOp {
	files, dirs := d.scan()
	var fileList []string
	var total int64
	for f, sz := range files {
		fileList = append(fileList, f)
		total += sz
	}
	sort.Strings(fileList)
	sort.Strings(dirs)
	subdirs := dirs[1:] // without the root
	anyFile := func() string {
		if len(fileList) == 0 || d.rng.IntN(20) == 0 {
			// Sometimes a name that may not exist, or is a folder.
			return path.Join(d.pick(dirs), d.pick(diffNames))
		}
		return d.pick(fileList)
	}
	newName := func() string {
		parent := d.pick(dirs)
		for diffDepth(parent) > 3 {
			parent = path.Dir(parent)
			if parent == "." {
				parent = ""
			}
		}
		return path.Join(parent, d.pick(diffNames))
	}

	p := d.rng.IntN(100)
	if len(fileList) > 40 && p < 30 {
		p = 70 // too many files: unlink instead of create
	}
	switch {
	case p < 14: // create (or truncate-and-rewrite an existing file)
		name := newName()
		pat, data := d.data(d.size(total))
		flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
		how := "O_TRUNC"
		if d.rng.IntN(5) == 0 {
			flags = os.O_WRONLY | os.O_CREATE | os.O_EXCL
			how = "O_EXCL"
		}
		return diffOp{
			kind: "create", desc: fmt.Sprintf("create %q %s with %d bytes (pattern %d)", name, how, len(data), pat.seed),
			paths: []string{name},
			apply: func(root string) ([]byte, error) {
				f, err := os.OpenFile(filepath.Join(root, name), flags, 0o644)
				if err != nil {
					return nil, err
				}
				if _, err := f.Write(data); err != nil {
					f.Close()
					return nil, err
				}
				return nil, f.Close()
			},
		}
	case p < 30: // write at a random offset into an existing file
		name := anyFile()
		size := files[name]
		off := d.rng.Int64N(size + 64<<10 + 1)
		if d.rng.IntN(3) == 0 {
			off = d.rng.Int64N(size + 1)
		}
		n := d.size(total)
		if n > 256<<10 {
			n = 256 << 10
		}
		pat, data := d.data(n)
		return diffOp{
			kind: "write", desc: fmt.Sprintf("write %q at %d, %d bytes (pattern %d)", name, off, len(data), pat.seed),
			paths: []string{name},
			apply: func(root string) ([]byte, error) {
				f, err := os.OpenFile(filepath.Join(root, name), os.O_RDWR, 0)
				if err != nil {
					return nil, err
				}
				if _, err := f.WriteAt(data, off); err != nil {
					f.Close()
					return nil, err
				}
				return nil, f.Close()
			},
		}
	case p < 38: // truncate up or down
		name := anyFile()
		size := files[name]
		var to int64
		switch d.rng.IntN(4) {
		case 0:
			to = 0
		case 1:
			to = size / 2
		case 2:
			to = size + d.rng.Int64N(128<<10)
		default:
			to = d.rng.Int64N(1 << 20)
		}
		if total > 8<<20 && to > size {
			to = size / 2
		}
		return diffOp{
			kind: "truncate", desc: fmt.Sprintf("truncate %q from %d to %d", name, size, to),
			paths: []string{name},
			apply: func(root string) ([]byte, error) {
				return nil, os.Truncate(filepath.Join(root, name), to)
			},
		}
	case p < 46: // reopen and append
		name := anyFile()
		pat, data := d.data(min(d.size(total), 64<<10))
		return diffOp{
			kind: "append", desc: fmt.Sprintf("append %d bytes to %q (pattern %d)", len(data), name, pat.seed),
			paths: []string{name},
			apply: func(root string) ([]byte, error) {
				f, err := os.OpenFile(filepath.Join(root, name), os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					return nil, err
				}
				if _, err := f.Write(data); err != nil {
					f.Close()
					return nil, err
				}
				return nil, f.Close()
			},
		}
	case p < 58: // read back: all of it, and a range through one handle
		name := anyFile()
		size := files[name]
		off := d.rng.Int64N(size + 2)
		n := 1 + d.rng.IntN(128<<10)
		return diffOp{
			kind: "read", desc: fmt.Sprintf("read %q, and %d bytes at %d", name, n, off),
			paths: []string{name},
			apply: func(root string) ([]byte, error) {
				all, err := os.ReadFile(filepath.Join(root, name))
				if err != nil {
					return nil, err
				}
				f, err := os.Open(filepath.Join(root, name))
				if err != nil {
					return nil, err
				}
				defer f.Close()
				buf := make([]byte, n)
				got, err := f.ReadAt(buf, off)
				if err != nil && !errors.Is(err, io.EOF) {
					return nil, err
				}
				return append(append(all, "|range|"...), buf[:got]...), nil
			},
		}
	case p < 67: // rename a file, maybe over another
		src := anyFile()
		dst := newName()
		return diffOp{
			kind: "rename-file", desc: fmt.Sprintf("rename file %q -> %q", src, dst),
			paths: []string{src, dst},
			apply: func(root string) ([]byte, error) {
				return nil, os.Rename(filepath.Join(root, src), filepath.Join(root, dst))
			},
		}
	case p < 72: // rename a folder, maybe over another or into itself
		if len(subdirs) == 0 || !d.dirRenames {
			return d.mkdirOp(newName())
		}
		src := d.pick(subdirs)
		dst := newName()
		return diffOp{
			kind: "rename-dir", desc: fmt.Sprintf("rename folder %q -> %q", src, dst),
			paths: []string{src, dst},
			apply: func(root string) ([]byte, error) {
				return nil, os.Rename(filepath.Join(root, src), filepath.Join(root, dst))
			},
		}
	case p < 81: // unlink
		name := anyFile()
		return diffOp{
			kind: "unlink", desc: fmt.Sprintf("unlink %q", name),
			paths: []string{name},
			apply: func(root string) ([]byte, error) {
				return nil, syscall.Unlink(filepath.Join(root, name))
			},
		}
	case p < 89:
		return d.mkdirOp(newName())
	case p < 96: // rmdir, empty or not
		if len(subdirs) == 0 {
			return d.mkdirOp(newName())
		}
		name := d.pick(subdirs)
		ents, err := os.ReadDir(filepath.Join(d.ref, name))
		if err != nil {
			d.t.Fatalf("reference: %v", err)
		}
		op := diffOp{
			kind: "rmdir", desc: fmt.Sprintf("rmdir %q (%d entries)", name, len(ents)),
			paths: []string{name},
			apply: func(root string) ([]byte, error) {
				return nil, syscall.Rmdir(filepath.Join(root, name))
			},
		}
		if len(ents) > 0 {
			op.kind = "rmdir-nonempty"
			op.mustFail = syscall.ENOTEMPTY
		}
		return op
	case p < 98: // touch, the way coreutils does it
		name := newName()
		if d.rng.IntN(2) == 0 {
			name = anyFile()
		}
		return diffOp{
			kind: "touch", desc: fmt.Sprintf("touch %q", name),
			paths: []string{name},
			apply: func(root string) ([]byte, error) { return nil, coreutilsTouch(filepath.Join(root, name)) },
		}
	default: // list a folder: names, types, sizes
		name := d.pick(dirs)
		return diffOp{
			kind: "readdir", desc: fmt.Sprintf("readdir %q", name),
			apply: func(root string) ([]byte, error) {
				ents, err := os.ReadDir(filepath.Join(root, name))
				if err != nil {
					return nil, err
				}
				var b bytes.Buffer
				for _, ent := range ents {
					info, err := ent.Info()
					if err != nil {
						return nil, fmt.Errorf("stat %s: %w", ent.Name(), err)
					}
					sz := info.Size()
					if info.IsDir() {
						sz = 0
					}
					fmt.Fprintf(&b, "%s %v %d\n", ent.Name(), info.IsDir(), sz)
				}
				return b.Bytes(), nil
			},
		}
	}
}

// coreutilsTouch does what `touch p` does: open with O_CREAT, dup the
// descriptor, close the first one (a flush), set the times through the
// second with futimens, and close it (another flush).
func coreutilsTouch(p string) error {
	fd, err := syscall.Open(p, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_NOCTTY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0o666)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	fd2, err := syscall.Dup(fd)
	if err != nil {
		syscall.Close(fd)
		return fmt.Errorf("dup: %w", err)
	}
	if err := syscall.Close(fd); err != nil {
		syscall.Close(fd2)
		return fmt.Errorf("close the first descriptor: %w", err)
	}
	// futimens(fd2, NULL) is utimensat(fd2, NULL, NULL, 0).
	if _, _, en := syscall.Syscall6(syscall.SYS_UTIMENSAT, uintptr(fd2), 0, 0, 0, 0, 0); en != 0 {
		syscall.Close(fd2)
		return fmt.Errorf("futimens: %w", en)
	}
	if err := syscall.Close(fd2); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

func (d *diffRun) mkdirOp(name string) diffOp {
	return diffOp{
		kind: "mkdir", desc: fmt.Sprintf("mkdir %q", name),
		paths: []string{name},
		apply: func(root string) ([]byte, error) {
			return nil, os.Mkdir(filepath.Join(root, name), 0o755)
		},
	}
}

// diffErrno reduces an error to its errno; an error without one is kept as
// text, which never equals an errno.
func diffErrno(err error) string {
	if err == nil {
		return "ok"
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return fmt.Sprintf("%s (errno %d)", diffErrnoName(en), int(en))
	}
	return "non-errno error: " + err.Error()
}

func diffErrnoName(en syscall.Errno) string {
	names := map[syscall.Errno]string{
		syscall.ENOENT: "ENOENT", syscall.EEXIST: "EEXIST", syscall.ENOTDIR: "ENOTDIR",
		syscall.EISDIR: "EISDIR", syscall.ENOTEMPTY: "ENOTEMPTY", syscall.EINVAL: "EINVAL",
		syscall.EIO: "EIO", syscall.EPERM: "EPERM", syscall.EACCES: "EACCES",
		syscall.ENOSYS: "ENOSYS", syscall.EXDEV: "EXDEV", syscall.EBUSY: "EBUSY",
		syscall.ENOTCONN: "ENOTCONN", syscall.ESTALE: "ESTALE",
	}
	if n, ok := names[en]; ok {
		return n
	}
	return en.Error()
}

// step draws one op, applies it to both sides and compares the outcomes.
func (d *diffRun) step(i int) diffOp {
	d.t.Helper()
	op := d.next()
	if d.counts == nil {
		d.counts = make(map[string]int)
	}
	refOut, refErr := op.apply(d.ref)
	mntOut, mntErr := d.applyMount(op)
	outcome := diffErrno(refErr)
	d.ops = append(d.ops, fmt.Sprintf("%4d %s: %s", i, op.desc, outcome))
	d.counts[op.kind+":"+strings.SplitN(outcome, " ", 2)[0]]++

	if op.mustFail != 0 && !errors.Is(refErr, op.mustFail) {
		d.t.Fatalf("op %d %s: the reference says %v, want %v: the test is wrong", i, op.desc, refErr, op.mustFail)
	}
	if diffErrno(mntErr) != outcome {
		d.t.Errorf("op %d %s: mount %s (%v), reference %s", i, op.desc, diffErrno(mntErr), mntErr, outcome)
		return op
	}
	if !bytes.Equal(refOut, mntOut) {
		d.t.Errorf("op %d %s: the mount returned different bytes: %s", i, op.desc, bytesDiffSummary(mntOut, refOut))
		return op
	}
	for _, p := range op.paths {
		if got, want := d.lstat(d.mnt, p), d.lstat(d.ref, p); got != want {
			d.t.Errorf("op %d %s: then %q on the mount is %s, in the reference %s", i, op.desc, p, got, want)
		}
	}
	return op
}

// diagnose logs, after a divergence, whether it lasts once the journal has
// drained, and what the bucket holds for the paths of the op: a wrong view
// or lost data.
func (d *diffRun) diagnose(op diffOp) {
	d.t.Helper()
	out, err := exec.Command(nimbusBin, "sync", "--timeout", "1m", d.mnt).CombinedOutput()
	d.t.Logf("diagnosis: nimbus sync: %v %s", err, bytes.TrimSpace(out))
	objs := d.e.objects()
	for _, p := range op.paths {
		d.t.Logf("diagnosis: after sync, %q on the mount is %s, in the reference %s; bucket key %q: %s, key %q: %s",
			p, d.lstat(d.mnt, p), d.lstat(d.ref, p), p, diffObject(objs, p), p+"/", diffObject(objs, p+"/"))
	}
	d.compareTrees(d.mnt, "after the divergence and nimbus sync")
	sameTree(d.t, localTree(d.t, d.ref), objs)
}

func diffObject(objs map[string][]byte, key string) string {
	if v, ok := objs[key]; ok {
		return fmt.Sprintf("%d bytes", len(v))
	}
	return "absent"
}

// applyMount applies op to the mount, failing if it hangs.
func (d *diffRun) applyMount(op diffOp) ([]byte, error) {
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := op.apply(d.mnt)
		done <- result{out, err}
	}()
	select {
	case r := <-done:
		return r.out, r.err
	case <-time.After(time.Minute):
		d.t.Fatalf("%s on the mount hangs (1 min)", op.desc)
		return nil, nil
	}
}

// lstat describes what is at rel: nothing, a folder, or a file and its size.
func (d *diffRun) lstat(root, rel string) string {
	info, err := os.Lstat(filepath.Join(root, rel))
	switch {
	case err != nil:
		return diffErrno(err)
	case info.IsDir():
		return "a folder"
	case info.Mode().IsRegular():
		return fmt.Sprintf("a file of %d bytes", info.Size())
	default:
		return "a " + info.Mode().Type().String()
	}
}

// compareTrees compares every name, type, size and byte under root with
// the reference.
func (d *diffRun) compareTrees(root, when string) {
	d.t.Helper()
	want := diffTree(d.t, d.ref)
	got := diffTree(d.t, root)
	var diffs []string
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("missing on the mount: %s (%s)", k, w))
		case g != w:
			diffs = append(diffs, fmt.Sprintf("%s: mount has %s, reference %s", k, g, w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("extra on the mount: %s (%s)", k, g))
		}
	}
	sort.Strings(diffs)
	for _, s := range diffs {
		d.t.Errorf("tree %s: %s", when, s)
	}
}

// diffTree describes each entry under root: a folder, or a file's size
// and content hash.
func diffTree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := make(map[string]string)
	err := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		info, err := de.Info()
		if err != nil {
			return err
		}
		switch {
		case info.IsDir():
			out[rel] = "folder"
		case info.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha(data)
			out[rel] = fmt.Sprintf("file, stat size %d, %d bytes read, sha256 %x…", info.Size(), len(data), sum[:8])
		default:
			out[rel] = info.Mode().Type().String()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return out
}
