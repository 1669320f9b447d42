package vfs

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestModelDifferential applies one random sequence of file operations to
// the in-process mount and to a plain local folder, the model, and
// requires the same outcome from each after every operation: the same
// errno, the same bytes read, and the same tree (names, types, sizes,
// permission bits, content). Every syncEvery operations and at the end it
// waits, as nimbus sync does, until the journal drained, and requires the
// dir: store's folder to hold the model (bytes and the mode metadata);
// at the end a second mount with a fresh cache over that store must show
// the model too.
//
// It is the binary-level integration/diff_test.go's model over the
// in-process tier, without MinIO or a process per mount, so that it runs
// many more operations. NIMBUS_VFS_DIFF_SEED replays a run (the seed is
// logged); NIMBUS_VFS_DIFF_OPS sets the number of operations (default
// modelDefaultOps, sized to about a minute under -race on a 2-core
// machine; 50000 and more on demand). A failure logs the last 200
// ops, or all with NIMBUS_VFS_DIFF_LOG_ALL=1.
func TestModelDifferential(t *testing.T) {
	nOps := modelDefaultOps
	if s := os.Getenv("NIMBUS_VFS_DIFF_OPS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 {
			t.Fatalf("NIMBUS_VFS_DIFF_OPS=%q: want a positive number", s)
		}
		nOps = v
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("NIMBUS_VFS_DIFF_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("NIMBUS_VFS_DIFF_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d, %d ops (replay with NIMBUS_VFS_DIFF_SEED=%d NIMBUS_VFS_DIFF_OPS=%d)", seed, nOps, seed, nOps)

	m := newTier(t, tierOpt{})
	d := &modelRun{
		t:      t,
		rng:    rand.New(rand.NewPCG(seed, seed^0x70de1)),
		m:      m,
		ref:    t.TempDir(),
		counts: make(map[string]int),
		root:   os.Geteuid() == 0,
	}
	t.Cleanup(func() {
		if t.Failed() {
			from := max(0, len(d.ops)-200)
			if os.Getenv("NIMBUS_VFS_DIFF_LOG_ALL") == "1" {
				from = 0
			}
			t.Logf("NIMBUS_VFS_DIFF_SEED=%d: ops %d to %d of %d:\n%s", seed, from, len(d.ops)-1, len(d.ops), strings.Join(d.ops[from:], "\n"))
		}
	})

	start := time.Now()
	for i := range nOps {
		op := d.step(i)
		if !t.Failed() {
			d.compareTrees(m.mnt, fmt.Sprintf("after op %d (%s)", i, op.desc))
		}
		if !t.Failed() && (i+1)%modelSyncEvery == 0 {
			d.compareStore(fmt.Sprintf("after op %d", i))
		}
		if t.Failed() {
			t.FailNow() // later ops would only repeat the divergence
		}
	}
	d.compareStore("at the end")
	counts := make([]string, 0, len(d.counts))
	for k, v := range d.counts {
		counts = append(counts, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(counts)
	t.Logf("%d ops in %v: %s", nOps, time.Since(start).Round(time.Millisecond), strings.Join(counts, " "))
	if t.Failed() {
		t.FailNow()
	}
	fresh := newTier(t, tierOpt{remote: m.remote})
	d.compareTrees(fresh.mnt, "on a second mount with a fresh cache")
}

const (
	// modelDefaultOps is the CI count: well under a minute with -race.
	modelDefaultOps = 3000
	// modelSyncEvery is how often the run waits for the journal to drain
	// and compares the store.
	modelSyncEvery = 500
	// modelMaxBytes bounds the model's total size, so that comparing
	// whole trees after each op stays cheap.
	modelMaxBytes = 4 << 20
)

// modelRun is one run: the mount, the model folder, and the log of the
// ops applied so far.
type modelRun struct {
	t      *testing.T
	rng    *rand.Rand
	m      *tier
	ref    string
	ops    []string
	counts map[string]int
	// root: permission bits do not restrict the model, so any mode may
	// be drawn (the mount enforces none, as it has no default_permissions).
	root bool
}

// modelFiles and modelDirs are few, so that names collide: an op often
// meets an existing file or folder of the same name. They are disjoint,
// so that no path is a file at one time and a folder at another: the dir:
// store cannot hold key "p" and "p/" at once, and the journal uploads a
// delete of one and the create of the other in parallel (different keys),
// so such a run would park an upload as an invalid key. Ops that would
// meet the other kind are still drawn (clash), where they fail.
var (
	modelFiles = []string{"a", "b", "c.txt", "x y"}
	modelDirs  = []string{"dir", "sub", "e f"}
)

// modelOp is one operation, applied to a root: it returns what it saw
// (bytes read, a listing) for comparison, and its error.
type modelOp struct {
	desc  string
	kind  string
	apply func(root string) ([]byte, error)
	// mustFail is the errno the model must return, so that the test
	// knows it exercised that refusal (rmdir of a non-empty folder).
	mustFail syscall.Errno
	// src and dst are the paths the op changes (dst only for renames).
	src, dst string
}

func (d *modelRun) pick(s []string) string { return s[d.rng.IntN(len(s))] }

// scan lists the model: its files with their sizes, and its folders ("" is
// the root).
func (d *modelRun) scan() (files map[string]int64, dirs []string) {
	d.t.Helper()
	files = make(map[string]int64)
	dirs = []string{""}
	err := filepath.WalkDir(d.ref, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(d.ref, p)
		if err != nil || rel == "." {
			return err
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
		d.t.Fatalf("scan the model: %v", err)
	}
	sort.Strings(dirs)
	return files, dirs
}

// size draws a write size: mostly small, sometimes up to 512 KiB.
func (d *modelRun) size(total int64) int {
	if total > modelMaxBytes {
		return d.rng.IntN(4 << 10)
	}
	switch p := d.rng.IntN(100); {
	case p < 8:
		return 0
	case p < 80:
		return 1 + d.rng.IntN(8<<10)
	case p < 95:
		return 8<<10 + d.rng.IntN(120<<10)
	default:
		return 128<<10 + d.rng.IntN(384<<10+1)
	}
}

// data makes n bytes from a seed that the op's description names.
func (d *modelRun) data(n int) (uint64, []byte) {
	seed := d.rng.Uint64()
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return seed, b
}

// next draws the next op from the state of the model.
func (d *modelRun) next() modelOp {
	files, dirs := d.scan()
	var fileList []string
	var total int64
	for f, sz := range files {
		fileList = append(fileList, f)
		total += sz
	}
	sort.Strings(fileList)
	subdirs := dirs[1:]
	anyFile := func() string {
		switch {
		case len(subdirs) > 0 && d.rng.IntN(30) == 0:
			return d.pick(subdirs) // a folder where a file is expected
		case len(fileList) == 0 || d.rng.IntN(20) == 0:
			return path.Join(d.pick(dirs), d.pick(modelFiles)) // may not exist
		}
		return d.pick(fileList)
	}
	parent := func() string {
		p := d.pick(dirs)
		for strings.Count(p, "/") >= 3 {
			p = path.Dir(p)
		}
		return p
	}
	// newFile and newDir name a place for a new file or folder, or rarely
	// an existing entry of the other kind (which the op must refuse).
	newFile := func() string {
		if len(subdirs) > 0 && d.rng.IntN(15) == 0 {
			return d.pick(subdirs)
		}
		return path.Join(parent(), d.pick(modelFiles))
	}
	newDir := func() string {
		if len(fileList) > 0 && d.rng.IntN(15) == 0 {
			return d.pick(fileList)
		}
		return path.Join(parent(), d.pick(modelDirs))
	}

	p := d.rng.IntN(100)
	if len(fileList) > 30 && p < 25 {
		p = 72 // too many files: unlink instead of create
	}
	switch {
	case p < 12: // create, or truncate and rewrite an existing file
		name := newFile()
		seed, data := d.data(d.size(total))
		flags, how := os.O_WRONLY|os.O_CREATE|os.O_TRUNC, "O_TRUNC"
		if d.rng.IntN(5) == 0 {
			flags, how = os.O_WRONLY|os.O_CREATE|os.O_EXCL, "O_EXCL"
		}
		mode := os.FileMode(0o644)
		if d.rng.IntN(4) == 0 {
			mode = d.mode()
		}
		return modelOp{
			kind: "create", desc: fmt.Sprintf("create %q %s mode %#o with %d bytes (data %d)", name, how, mode, len(data), seed),
			apply: func(root string) ([]byte, error) {
				f, err := os.OpenFile(filepath.Join(root, name), flags, mode)
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
	case p < 27: // write at an offset, maybe past the end, maybe twice
		name := anyFile()
		size := files[name]
		off := d.rng.Int64N(size + 64<<10 + 1)
		if d.rng.IntN(3) == 0 {
			off = d.rng.Int64N(size + 1)
		}
		seed, data := d.data(min(d.size(total), 256<<10))
		off2 := d.rng.Int64N(size + int64(len(data)) + 1)
		twice := d.rng.IntN(4) == 0
		return modelOp{
			kind: "write", desc: fmt.Sprintf("write %q at %d, %d bytes (data %d), again at %d: %v", name, off, len(data), seed, off2, twice),
			apply: func(root string) ([]byte, error) {
				f, err := os.OpenFile(filepath.Join(root, name), os.O_RDWR, 0)
				if err != nil {
					return nil, err
				}
				if _, err := f.WriteAt(data, off); err != nil {
					f.Close()
					return nil, err
				}
				if twice {
					if _, err := f.WriteAt(data[:len(data)/2], off2); err != nil {
						f.Close()
						return nil, err
					}
				}
				return nil, f.Close()
			},
		}
	case p < 35: // truncate up or down
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
			to = d.rng.Int64N(512 << 10)
		}
		if total > modelMaxBytes && to > size {
			to = size / 2
		}
		return modelOp{
			kind: "truncate", desc: fmt.Sprintf("truncate %q from %d to %d", name, size, to),
			apply: func(root string) ([]byte, error) { return nil, os.Truncate(filepath.Join(root, name), to) },
		}
	case p < 41: // reopen and append
		name := anyFile()
		seed, data := d.data(min(d.size(total), 32<<10))
		return modelOp{
			kind: "append", desc: fmt.Sprintf("append %d bytes to %q (data %d)", len(data), name, seed),
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
	case p < 49: // read a range
		name := anyFile()
		off := d.rng.Int64N(files[name] + 2)
		n := 1 + d.rng.IntN(128<<10)
		return modelOp{
			kind: "read", desc: fmt.Sprintf("read %q, %d bytes at %d", name, n, off),
			apply: func(root string) ([]byte, error) {
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
				return buf[:got], nil
			},
		}
	case p < 52: // write, then read back through the same handle before close
		name := anyFile()
		size := files[name]
		off := d.rng.Int64N(size + 1)
		seed, data := d.data(1 + d.rng.IntN(16<<10))
		return modelOp{
			kind: "write-read", desc: fmt.Sprintf("write %q at %d, %d bytes (data %d), read it all back before close", name, off, len(data), seed),
			apply: func(root string) ([]byte, error) {
				f, err := os.OpenFile(filepath.Join(root, name), os.O_RDWR, 0)
				if err != nil {
					return nil, err
				}
				defer f.Close()
				if _, err := f.WriteAt(data, off); err != nil {
					return nil, err
				}
				if _, err := f.Seek(0, io.SeekStart); err != nil {
					return nil, err
				}
				return io.ReadAll(f)
			},
		}
	case p < 61: // rename a file, maybe over another
		src, dst := anyFile(), newFile()
		if d.isDir(src) { // a folder must not take a file's name
			if len(fileList) == 0 {
				return d.mkdirOp(newDir())
			}
			dst = d.pick(fileList) // refused: ENOTDIR
		}
		return modelOp{
			src: src, dst: dst,
			kind: "rename-file", desc: fmt.Sprintf("rename file %q -> %q", src, dst),
			apply: func(root string) ([]byte, error) {
				return nil, os.Rename(filepath.Join(root, src), filepath.Join(root, dst))
			},
		}
	case p < 66: // rename a folder, maybe over another or into itself
		if len(subdirs) == 0 {
			return d.mkdirOp(newDir())
		}
		src, dst := d.pick(subdirs), newDir()
		return modelOp{
			src: src, dst: dst,
			kind: "rename-dir", desc: fmt.Sprintf("rename folder %q -> %q", src, dst),
			apply: func(root string) ([]byte, error) {
				return nil, os.Rename(filepath.Join(root, src), filepath.Join(root, dst))
			},
		}
	case p < 75: // unlink
		name := anyFile()
		return modelOp{
			src:  name,
			kind: "unlink", desc: fmt.Sprintf("unlink %q", name),
			apply: func(root string) ([]byte, error) { return nil, syscall.Unlink(filepath.Join(root, name)) },
		}
	case p < 82:
		return d.mkdirOp(newDir())
	case p < 88: // rmdir, empty or not
		if len(subdirs) == 0 {
			return d.mkdirOp(newDir())
		}
		name := d.pick(subdirs)
		ents, err := os.ReadDir(filepath.Join(d.ref, name))
		if err != nil {
			d.t.Fatalf("model: %v", err)
		}
		op := modelOp{
			kind: "rmdir", desc: fmt.Sprintf("rmdir %q (%d entries)", name, len(ents)),
			apply: func(root string) ([]byte, error) { return nil, syscall.Rmdir(filepath.Join(root, name)) },
		}
		if len(ents) > 0 {
			op.kind, op.mustFail = "rmdir-nonempty", syscall.ENOTEMPTY
		}
		return op
	case p < 95: // chmod a file (folders keep 0755 on the mount by design)
		name := anyFile()
		if _, isFile := files[name]; !isFile && d.isDir(name) {
			if len(fileList) == 0 {
				return d.mkdirOp(newDir())
			}
			name = d.pick(fileList)
		}
		mode := d.mode()
		return modelOp{
			src:  name,
			kind: "chmod", desc: fmt.Sprintf("chmod %#o %q", mode, name),
			apply: func(root string) ([]byte, error) { return nil, os.Chmod(filepath.Join(root, name), mode) },
		}
	default: // list a folder: names, types, sizes, modes
		name := d.pick(dirs)
		return modelOp{
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
					fmt.Fprintf(&b, "%s\n", describe(info))
				}
				return b.Bytes(), nil
			},
		}
	}
}

func (d *modelRun) isDir(rel string) bool {
	info, err := os.Lstat(filepath.Join(d.ref, rel))
	return err == nil && info.IsDir()
}

// mode draws permission bits. Without root, the owner keeps read and
// write, so that the model refuses nothing the mount allows.
func (d *modelRun) mode() os.FileMode {
	modes := []os.FileMode{0o600, 0o640, 0o644, 0o664, 0o666, 0o700, 0o750, 0o755, 0o777}
	if d.root {
		modes = append(modes, 0o400, 0o444, 0o555, 0o4755, 0o1777, 0o000)
	}
	return modes[d.rng.IntN(len(modes))]
}

func (d *modelRun) mkdirOp(name string) modelOp {
	return modelOp{
		kind: "mkdir", desc: fmt.Sprintf("mkdir %q", name),
		apply: func(root string) ([]byte, error) { return nil, os.Mkdir(filepath.Join(root, name), 0o755) },
	}
}

// modelErrno reduces an error to its errno; an error without one is kept
// as text, which never equals an errno.
func modelErrno(err error) string {
	if err == nil {
		return "ok"
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return fmt.Sprintf("%s (errno %d)", en.Error(), int(en))
	}
	return "non-errno error: " + err.Error()
}

// step draws one op, applies it to both sides and compares the outcomes.
func (d *modelRun) step(i int) modelOp {
	d.t.Helper()
	op := d.next()
	refOut, refErr := op.apply(d.ref)
	mntOut, mntErr := d.applyMount(op)
	outcome := modelErrno(refErr)
	d.ops = append(d.ops, fmt.Sprintf("%5d %s: %s", i, op.desc, outcome))
	d.counts[op.kind+":"+strings.SplitN(outcome, " (", 2)[0]]++
	if op.mustFail != 0 && !errors.Is(refErr, op.mustFail) {
		d.t.Fatalf("op %d %s: the model says %v, want %v: the test is wrong", i, op.desc, refErr, op.mustFail)
	}
	if got := modelErrno(mntErr); got != outcome {
		d.t.Errorf("op %d %s: mount %s (%v), model %s", i, op.desc, got, mntErr, outcome)
	} else if !bytes.Equal(refOut, mntOut) {
		d.t.Errorf("op %d %s: the mount returned %d bytes (sha256 %s), the model %d (sha256 %s)",
			i, op.desc, len(mntOut), shortSum(mntOut), len(refOut), shortSum(refOut))
	}
	return op
}

// applyMount applies op to the mount, failing if it hangs.
func (d *modelRun) applyMount(op modelOp) ([]byte, error) {
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := op.apply(d.m.mnt)
		done <- result{out, err}
	}()
	select {
	case r := <-done:
		return r.out, r.err
	case <-time.After(2 * time.Minute):
		d.t.Fatalf("%s on the mount hangs (2 min)", op.desc)
		return nil, nil
	}
}

func shortSum(b []byte) string {
	s := sha256.Sum256(b)
	return fmt.Sprintf("%x…", s[:6])
}

// describe is what a comparison looks at in an entry: name, type,
// permission bits, and a file's size.
func describe(info fs.FileInfo) string {
	if info.IsDir() {
		return fmt.Sprintf("%s folder %v", info.Name(), info.Mode().Perm())
	}
	mode := info.Mode().String()
	return fmt.Sprintf("%s %s %d bytes", info.Name(), mode, info.Size())
}

// modelTree describes every entry under root, a file with its content's
// hash too.
func modelTree(t *testing.T, root string) map[string]string {
	t.Helper()
	out, _, err := walkModel(root)
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return out
}

// walkModel describes every file and folder under root, and on an error
// says which path (relative to root) it was at.
func walkModel(root string) (out map[string]string, at string, err error) {
	out = make(map[string]string)
	err = filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
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
		rel = filepath.ToSlash(rel)
		at = rel
		desc := describe(info)
		if info.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(", %d read, sha256 %s", len(data), shortSum(data))
		}
		out[rel] = desc
		return nil
	})
	return out, at, err
}

// compareTrees requires the mount at root to show what the model holds.
func (d *modelRun) compareTrees(root, when string) {
	d.t.Helper()
	want := modelTree(d.t, d.ref)
	got, at, err := walkModel(root)
	if err != nil {
		if root == d.m.mnt {
			d.explainPath(at)
		}
		d.t.Fatalf("walk %s %s: %v", root, when, err)
	}
	reportDiffs(d.t, "tree "+when, want, got)
	if d.t.Failed() && root == d.m.mnt {
		d.explain(want, got)
	}
}

// explain logs what the mount knows of each path the trees disagree on:
// its tree entry, the journal's newest pending op on it, and the store's
// object, which tell apart a stale listing, a stale local entry and an
// upload that should not have happened.
func (d *modelRun) explain(want, got map[string]string) {
	keys := maps.Clone(want)
	maps.Copy(keys, got)
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		wv, inWant := want[k]
		if gv, inGot := got[k]; inWant && inGot && wv == gv {
			continue
		}
		d.explainPath(k)
	}
}

// explainPath logs what the mount knows of the path k (see explain), and
// its live node's entry, if the kernel holds one.
func (d *modelRun) explainPath(k string) {
	dir, name := splitPath(k)
	e, ok, err := d.m.fsys.cfg.Tree.Get(dir, name)
	d.t.Logf("%s: tree entry %+v (found %v, err %v)", k, e, ok, err)
	p, pending := d.m.jour.Pending(k)
	d.t.Logf("%s: newest pending op %+v (pending %v)", k, p, pending)
	_, info, err := d.m.object(k)
	d.t.Logf("%s: store %+v (err %v)", k, info, err)
	if n := d.m.fsys.liveFile(k); n != nil {
		n.mu.Lock()
		working := n.work != nil
		n.mu.Unlock()
		d.t.Logf("%s: live node entry %+v, working copy %v, content %+v", k, n.getEntry(), working, n.content())
	}
}

func reportDiffs(t *testing.T, when string, want, got map[string]string) {
	t.Helper()
	var diffs []string
	for k, w := range want {
		switch g, ok := got[k]; {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("missing: %s (%s)", k, w))
		case g != w:
			diffs = append(diffs, fmt.Sprintf("%s: got %s, want %s", k, g, w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("extra: %s (%s)", k, g))
		}
	}
	sort.Strings(diffs)
	for _, s := range diffs {
		t.Errorf("%s: %s", when, s)
	}
}

// compareStore waits until the journal drained, then requires the store to
// hold the model: each file with its bytes and its permission bits (the
// nimbus-mode metadata; none means 0644), each folder as a marker or
// implied by a key under it, and nothing else.
func (d *modelRun) compareStore(when string) {
	d.t.Helper()
	d.m.sync(tierSync)
	want := make(map[string]string)
	for k, v := range modelTree(d.t, d.ref) {
		if strings.Contains(v, " folder ") {
			want[k+"/"] = "folder"
			continue
		}
		info, err := os.Lstat(filepath.Join(d.ref, k))
		if err != nil {
			d.t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(d.ref, k))
		if err != nil {
			d.t.Fatal(err)
		}
		want[k] = fmt.Sprintf("mode %o, %d bytes, sha256 %s", modeBits(info.Mode()), len(data), shortSum(data))
	}
	got := make(map[string]string)
	for _, key := range d.m.remoteKeys() {
		if strings.HasSuffix(key, "/") {
			got[key] = "folder"
			continue
		}
		data, info, err := d.m.object(key)
		if err != nil {
			d.t.Fatalf("store %s: %v", key, err)
		}
		mode := uint64(0o644)
		if s, ok := info.Meta[metaMode]; ok {
			if mode, err = strconv.ParseUint(s, 8, 32); err != nil {
				d.t.Errorf("store %s: mode metadata %q: %v", key, s, err)
			}
		}
		got[key] = fmt.Sprintf("mode %o, %d bytes, sha256 %s", mode, len(data), shortSum(data))
	}
	// A folder needs no marker when a key under it implies it.
	for k := range want {
		if strings.HasSuffix(k, "/") && got[k] == "" {
			for g := range got {
				if strings.HasPrefix(g, k) {
					got[k] = "folder"
					break
				}
			}
		}
	}
	reportDiffs(d.t, "store "+when, want, got)
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// modeBits are the permission bits as nimbus stores them (with setuid,
// setgid and sticky).
func modeBits(m os.FileMode) uint32 {
	bits := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		bits |= syscall.S_ISUID
	}
	if m&os.ModeSetgid != 0 {
		bits |= syscall.S_ISGID
	}
	if m&os.ModeSticky != 0 {
		bits |= syscall.S_ISVTX
	}
	return bits
}
