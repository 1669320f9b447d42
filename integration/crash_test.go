package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestCrashDuringWrites checks promise 4 against real crashes: nimbus is
// killed with SIGKILL while a program writes, renames and deletes files on
// the mount, again and again on one cache folder (one machine). Whatever
// close(), fsync(), rename() or unlink() acknowledged before a kill must be
// on the mount after the restart and, after nimbus sync, in the bucket,
// exactly once, with no conflicted copy: replay after a crash is
// idempotent. What was in flight at a kill may or may not have happened,
// but it is all or nothing per name, and it never touches another file.
//
// NIMBUS_CRASH_ITERATIONS raises the number of crashes (default 20);
// NIMBUS_CRASH_SEED replays one run.
func TestCrashDuringWrites(t *testing.T) {
	iterations := testEnvCount(t, "NIMBUS_CRASH_ITERATIONS", 20)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("NIMBUS_CRASH_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("NIMBUS_CRASH_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d, %d crashes (replay with NIMBUS_CRASH_SEED=%d)", seed, iterations, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))

	e := newEnv(t)
	cacheDir := t.TempDir()
	model := &crashModel{states: make(map[string][]crashVersion)}
	testStart := time.Now()
	var history []string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ops, in order (seed %d):\n%s", seed, strings.Join(history, "\n"))
		}
	})

	for iter := range iterations {
		m := e.mount(mountOpt{cacheDir: cacheDir})
		if iter == 0 {
			if err := os.Mkdir(m.path("sub"), 0o755); err != nil {
				t.Fatalf("mkdir sub: %v", err)
			}
		} else {
			// The restart after a crash: what was acknowledged is there,
			// and what was in flight is settled one way or the other.
			model.settle(t, m, iter)
			model.checkListing(t, m, fmt.Sprintf("after crash %d", iter))
		}

		w := &crashWriter{
			model:   model,
			mnt:     m,
			iter:    iter,
			rng:     rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64())),
			done:    make(chan struct{}),
			history: &history,
		}
		go w.run()
		delay := time.Duration(50+rng.IntN(351)) * time.Millisecond
		time.Sleep(delay)
		w.killed.Store(true)
		killNimbus(t, m)
		select {
		case <-w.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("crash %d: the writer is stuck 30s after nimbus was killed (op: %s)", iter+1, w.current())
		}
		detachDead(t, m)
		history = append(history, fmt.Sprintf("run %d: SIGKILL after %v", iter, delay))
		t.Logf("crash %d after %v: %d ops acknowledged, in flight: %s", iter+1, delay, w.acked, w.current())
		for _, err := range w.unexpected {
			t.Errorf("crash %d: while nimbus was alive: %v", iter+1, err)
		}
	}

	// One more restart, then everything must reach the bucket.
	m := e.mount(mountOpt{cacheDir: cacheDir})
	model.settle(t, m, iterations)
	model.checkListing(t, m, "final mount")
	// Every name, not just the ones touched by the last run.
	model.checkAll(t, m)
	m.sync(3 * time.Minute)
	if st := m.status(); len(st.Conflicts) > 0 {
		t.Errorf("nimbus status reports conflicts after crashes alone: %+v", st.Conflicts)
	}
	objs := e.objects()
	want := model.expected()
	var diffs []string
	for k, v := range want {
		got, ok := objs[k]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("acknowledged file missing in the bucket: %s (%d bytes)", k, len(v)))
		case !bytes.Equal(got, v):
			diffs = append(diffs, fmt.Sprintf("bucket content of %s differs: %s", k, bytesDiffSummary(got, v)))
		}
	}
	for k := range objs {
		if _, ok := want[k]; ok || k == "sub/" {
			continue
		}
		if strings.Contains(k, "(conflicted copy") {
			diffs = append(diffs, fmt.Sprintf("conflicted copy in the bucket after crashes alone: %s (%d bytes)", k, len(objs[k])))
		} else {
			diffs = append(diffs, fmt.Sprintf("extra key in the bucket (deleted, renamed away or never acknowledged): %s (%d bytes)", k, len(objs[k])))
		}
	}
	sort.Strings(diffs)
	for _, d := range diffs {
		t.Error(d)
	}
	t.Logf("%d crashes, %d files in the bucket, %d keys expected, in %v", iterations, len(objs), len(want), time.Since(testStart).Round(time.Second))
}

// testEnvCount reads a positive integer from the environment, else def.
func testEnvCount(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

// crashMount kills nimbus with SIGKILL, waits until it is gone and detaches
// its dead mount, which would otherwise answer ENOTCONN forever.
// killNimbus kills the daemon. The mount stays attached: every access to it
// fails (ENOTCONN) until it is detached.
func killNimbus(t *testing.T, m *mount) {
	t.Helper()
	if err := syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill nimbus: %v", err)
	}
	select {
	case <-m.exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("nimbus still running 15s after SIGKILL")
	}
}

// detachDead detaches the mount of a killed daemon. Only once the writer has
// stopped: an operation after the detach would land in the plain folder
// under the mountpoint, succeed, and look acknowledged.
func detachDead(t *testing.T, m *mount) {
	t.Helper()
	if isMounted(m.dir) {
		if err := syscall.Unmount(m.dir, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("detach the dead mount %s: %v", m.dir, err)
		}
	}
}

// crashVersion is one state a name may be in after a crash.
type crashVersion struct {
	present bool
	data    []byte
	// partial: an unacknowledged write of data. Any length in
	// [minLen, len(data)] is acceptable, each byte either data[i] or a
	// zero of a hole that was not written back yet.
	partial bool
	minLen  int
}

func (v crashVersion) matches(present bool, got []byte) bool {
	if present != v.present {
		return false
	}
	if !present {
		return true
	}
	if !v.partial {
		return bytes.Equal(got, v.data)
	}
	if len(got) < v.minLen || len(got) > len(v.data) {
		return false
	}
	for i, b := range got {
		if b != v.data[i] && b != 0 {
			return false
		}
	}
	return true
}

func (v crashVersion) String() string {
	switch {
	case !v.present:
		return "absent"
	case v.partial:
		return fmt.Sprintf("part of an unacknowledged write of %d bytes (at least %d)", len(v.data), v.minLen)
	default:
		return fmt.Sprintf("%d acknowledged bytes", len(v.data))
	}
}

// crashModel is what the mount must hold: for each name, the states it may
// be in. One state means the name is settled; more than one, that an op on
// it was in flight at a kill. A missing name is absent.
type crashModel struct {
	mu      sync.Mutex
	states  map[string][]crashVersion // GUARDED_BY(mu)
	touched map[string]bool           // GUARDED_BY(mu); names changed since the last settle
	// renames in flight at a kill: exactly one of the two names must hold
	// the file afterwards.
	renames [][2]string // GUARDED_BY(mu)
}

func (c *crashModel) set(name string, vs ...crashVersion) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.touched == nil {
		c.touched = make(map[string]bool)
	}
	c.touched[name] = true
	if len(vs) == 1 && !vs[0].present {
		delete(c.states, name)
		return
	}
	c.states[name] = vs
}

// settled returns the content of name if it is settled and present.
func (c *crashModel) settled(name string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	vs := c.states[name]
	if len(vs) != 1 || !vs[0].present || vs[0].partial {
		return nil, false
	}
	return vs[0].data, true
}

// presentNames lists the settled present names, sorted.
func (c *crashModel) presentNames() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for n, vs := range c.states {
		if len(vs) == 1 && vs[0].present && !vs[0].partial {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// settle reads every name touched before the last crash on the restarted
// mount, checks it is in one of its allowed states, and makes what it
// shows the settled state from now on.
func (c *crashModel) settle(t *testing.T, m *mount, iter int) {
	t.Helper()
	c.mu.Lock()
	names := make([]string, 0, len(c.touched))
	for n := range c.touched {
		names = append(names, n)
	}
	renames := c.renames
	c.touched, c.renames = nil, nil
	c.mu.Unlock()
	sort.Strings(names)
	for _, name := range names {
		c.mu.Lock()
		allowed := c.states[name]
		c.mu.Unlock()
		if len(allowed) == 0 {
			allowed = []crashVersion{{}}
		}
		present, got, err := crashRead(m, name)
		if err != nil {
			// Left as it was: the final checks look at it again.
			t.Errorf("after crash %d: read %s: %v", iter, name, err)
			continue
		}
		ok := false
		for _, v := range allowed {
			if v.matches(present, got) {
				ok = true
				break
			}
		}
		if !ok {
			var want []string
			for _, v := range allowed {
				w := v.String()
				if v.present && present {
					w += " (" + bytesDiffSummary(got, v.data) + ")"
				}
				want = append(want, w)
			}
			t.Errorf("after crash %d: %s is %s; allowed: %s", iter, name, crashShow(present, got), strings.Join(want, " | "))
		}
		c.mu.Lock()
		if present {
			c.states[name] = []crashVersion{{present: true, data: got}}
		} else {
			delete(c.states, name)
		}
		c.mu.Unlock()
	}
	for _, r := range renames {
		_, srcOK := c.settled(r[0])
		_, dstOK := c.settled(r[1])
		if srcOK == dstOK {
			t.Errorf("after crash %d: rename %s -> %s in flight at the kill: source present %v, target present %v; want exactly one",
				iter, r[0], r[1], srcOK, dstOK)
		}
	}
}

// checkAll reads every settled name on the mount.
func (c *crashModel) checkAll(t *testing.T, m *mount) {
	t.Helper()
	for _, name := range c.presentNames() {
		want, _ := c.settled(name)
		present, got, err := crashRead(m, name)
		switch {
		case err != nil:
			t.Errorf("read %s: %v", name, err)
		case !present:
			t.Errorf("%s is gone from the mount; want %d bytes acknowledged earlier", name, len(want))
		case !bytes.Equal(got, want):
			t.Errorf("%s on the mount differs: %s", name, bytesDiffSummary(got, want))
		}
	}
}

// checkListing compares the listings of / and /sub with the settled names.
func (c *crashModel) checkListing(t *testing.T, m *mount, when string) {
	t.Helper()
	var got []string
	for _, dir := range []string{"", "sub"} {
		ents, err := os.ReadDir(m.path(dir))
		if err != nil {
			t.Errorf("%s: readdir /%s: %v", when, dir, err)
			return
		}
		for _, ent := range ents {
			if dir == "" && ent.Name() == "sub" && ent.IsDir() {
				continue
			}
			got = append(got, path.Join(dir, ent.Name()))
		}
	}
	sort.Strings(got)
	want := c.presentNames()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s: the listing differs from the acknowledged files:\n%s", when, crashListDiff(got, want))
	}
}

// expected is the bucket the model implies once everything is uploaded.
func (c *crashModel) expected() map[string][]byte {
	out := make(map[string][]byte)
	for _, n := range c.presentNames() {
		out[n], _ = c.settled(n)
	}
	return out
}

// crashRead reads name on the mount: present and its bytes, or absent. A
// name that lstat shows but open says does not exist is an error, not
// an absence.
func crashRead(m *mount, name string) (bool, []byte, error) {
	data, err := os.ReadFile(m.path(name))
	if errors.Is(err, fs.ErrNotExist) {
		if info, serr := os.Lstat(m.path(name)); serr == nil {
			return false, nil, fmt.Errorf("lstat shows a %v of %d bytes, but open fails: %w", info.Mode().Type(), info.Size(), err)
		}
		return false, nil, nil
	}
	if err != nil {
		return false, nil, err
	}
	return true, data, nil
}

func crashShow(present bool, data []byte) string {
	if !present {
		return "absent"
	}
	return fmt.Sprintf("%d bytes", len(data))
}

// bytesDiffSummary says how got differs from want, briefly.
func bytesDiffSummary(got, want []byte) string {
	if bytes.Equal(got, want) {
		return "equal"
	}
	n := min(len(got), len(want))
	i := 0
	for i < n && got[i] == want[i] {
		i++
	}
	return fmt.Sprintf("got %d bytes, want %d; first difference at offset %d", len(got), len(want), i)
}

// crashListDiff shows the names only in got (+) and only in want (-).
func crashListDiff(got, want []string) string {
	in := func(s []string, x string) bool {
		i := sort.SearchStrings(s, x)
		return i < len(s) && s[i] == x
	}
	var b strings.Builder
	for _, g := range got {
		if !in(want, g) {
			fmt.Fprintf(&b, "  + %s (on the mount, not acknowledged)\n", g)
		}
	}
	for _, w := range want {
		if !in(got, w) {
			fmt.Fprintf(&b, "  - %s (acknowledged, missing)\n", w)
		}
	}
	return b.String()
}

// crashWriter writes on a mount until nimbus dies, recording in the model
// what each acknowledged call made durable.
type crashWriter struct {
	model *crashModel
	mnt   *mount
	iter  int
	rng   *rand.Rand
	done  chan struct{}
	// killed is set just before SIGKILL, so that an error seen before it
	// is a failure of a live nimbus, and one seen after it is the crash.
	killed atomic.Bool

	// Read by the test after done is closed.
	acked      int
	unexpected []error
	history    *[]string // every op of the test, with its outcome

	mu sync.Mutex
	op string // GUARDED_BY(mu); the op in flight
}

func (w *crashWriter) current() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.op == "" {
		return "none"
	}
	return w.op
}

func (w *crashWriter) run() {
	defer close(w.done)
	for seq := 0; !w.killed.Load(); seq++ {
		err := w.step(seq)
		outcome := "ok"
		if err != nil {
			outcome = err.Error()
		}
		*w.history = append(*w.history, fmt.Sprintf("run %d: %s: %s", w.iter, w.current(), outcome))
		if err != nil {
			if !w.killed.Load() {
				w.unexpected = append(w.unexpected, fmt.Errorf("%s: %w", w.current(), err))
			}
			return
		}
		w.acked++
		w.mu.Lock()
		w.op = ""
		w.mu.Unlock()
	}
}

func (w *crashWriter) setOp(format string, args ...any) {
	w.mu.Lock()
	w.op = fmt.Sprintf(format, args...)
	w.mu.Unlock()
}

// crashSize draws a file size: often small, sometimes up to 2 MiB.
func crashSize(rng *rand.Rand) int {
	switch p := rng.IntN(100); {
	case p < 10:
		return 0
	case p < 60:
		return 1 + rng.IntN(64<<10)
	case p < 90:
		return 64<<10 + rng.IntN(448<<10)
	default:
		return 512<<10 + rng.IntN(3<<19)
	}
}

// step runs one operation. A nil error means the kernel acknowledged it.
func (w *crashWriter) step(seq int) error {
	names := w.model.presentNames()
	p := w.rng.IntN(100)
	if len(names) == 0 {
		p = 0
	}
	dir := ""
	if w.rng.IntN(3) == 0 {
		dir = "sub"
	}
	switch {
	case p < 55:
		name := path.Join(dir, fmt.Sprintf("f%03d-%03d.bin", w.iter, seq))
		return w.writeFile(name, true, nil)
	case p < 75:
		name := names[w.rng.IntN(len(names))]
		old, _ := w.model.settled(name)
		return w.writeFile(name, false, old)
	case p < 90:
		src := names[w.rng.IntN(len(names))]
		dst := path.Join(dir, fmt.Sprintf("r%03d-%03d.bin", w.iter, seq))
		data, _ := w.model.settled(src)
		w.setOp("rename %s -> %s", src, dst)
		w.model.set(src, crashVersion{present: true, data: data}, crashVersion{})
		w.model.set(dst, crashVersion{}, crashVersion{present: true, data: data})
		if err := os.Rename(w.mnt.path(src), w.mnt.path(dst)); err != nil {
			w.model.mu.Lock()
			w.model.renames = append(w.model.renames, [2]string{src, dst})
			w.model.mu.Unlock()
			return err
		}
		w.model.set(src, crashVersion{})
		w.model.set(dst, crashVersion{present: true, data: data})
		return nil
	default:
		name := names[w.rng.IntN(len(names))]
		data, _ := w.model.settled(name)
		w.setOp("unlink %s", name)
		w.model.set(name, crashVersion{present: true, data: data}, crashVersion{})
		if err := os.Remove(w.mnt.path(name)); err != nil {
			return err
		}
		w.model.set(name, crashVersion{})
		return nil
	}
}

// writeFile creates name (O_EXCL) or overwrites it (O_TRUNC) with fresh
// bytes, in chunks, sometimes with an fsync half way.
func (w *crashWriter) writeFile(name string, create bool, old []byte) error {
	size := crashSize(w.rng)
	data := pattern{seed: w.rng.Uint64(), size: int64(size)}.bytes(0, int64(size))
	half := -1 // no fsync
	if size >= 2 && w.rng.IntN(4) == 0 {
		half = size / 2
	}
	verb := "overwrite"
	flags := os.O_WRONLY | os.O_TRUNC
	before := crashVersion{present: true, data: old}
	if create {
		verb, flags, before = "create", os.O_WRONLY|os.O_CREATE|os.O_EXCL, crashVersion{}
	}
	w.setOp("%s %s (%d bytes, fsync at %d)", verb, name, size, half)
	unfinished := crashVersion{present: true, data: data, partial: true}
	w.model.set(name, before, unfinished)

	f, err := os.OpenFile(w.mnt.path(name), flags, 0o644)
	if err != nil {
		return err
	}
	const chunk = 64 << 10
	for off := 0; off < size; {
		if off == half {
			if err := f.Sync(); err != nil {
				f.Close()
				return fmt.Errorf("fsync: %w", err)
			}
			// What fsync acknowledged replaced the earlier version.
			unfinished.minLen = half
			w.model.set(name, unfinished)
		}
		end := min(off+chunk, size)
		if off < half && half < end {
			end = half
		}
		n, err := f.Write(data[off:end])
		off += n
		if err != nil {
			f.Close()
			return fmt.Errorf("write at %d: %w", off, err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	w.model.set(name, crashVersion{present: true, data: data})
	return nil
}
