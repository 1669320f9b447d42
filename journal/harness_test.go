package journal

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/dir"
	"github.com/nimbus-fs/nimbus/backend/faulty"
)

// t0 is the fixed clock of the tests, so conflict names are predictable.
var t0 = time.Date(2026, 11, 21, 15, 30, 0, 0, time.UTC)

// call is one request that reached hookStore.
type call struct {
	Op      string // faulty.OpPut, …
	Key     string
	Cond    backend.Cond
	IfMatch string          // Delete
	Src     string          // Copy
	SrcETag string          // Copy
	Same    []backend.Range // PutDelta
}

func (c call) String() string {
	s := c.Op + " " + c.Key
	if c.Src != "" {
		s += " from " + c.Src + "@" + c.SrcETag
	}
	switch {
	case c.Cond.IfMatch != "":
		s += " if-match " + c.Cond.IfMatch
	case c.Cond.IfNoneMatch:
		s += " if-none-match"
	case c.IfMatch != "":
		s += " if-match " + c.IfMatch
	}
	if c.Op == faulty.OpPutDelta {
		s += " same"
		for _, r := range c.Same {
			s += fmt.Sprintf(" %d+%d", r.Off, r.Len)
		}
	}
	return s
}

// hookStore is a Store that records every call and runs the test's hooks
// around the real store: before may block or fail a call before it reaches
// the store; after may block or replace the answer once it has.
type hookStore struct {
	inner backend.Backend

	mu     sync.Mutex
	calls  []call
	before func(ctx context.Context, c call) error
	after  func(ctx context.Context, c call, err error) error
}

var (
	_ Store               = (*hookStore)(nil)
	_ backend.DeltaPutter = (*hookStore)(nil)
)

func (s *hookStore) setHooks(before func(context.Context, call) error, after func(context.Context, call, error) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.before, s.after = before, after
}

// log returns the calls so far, as strings.
func (s *hookStore) log() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, len(s.calls))
	for i, c := range s.calls {
		out[i] = c.String()
	}
	return out
}

// count returns how many calls of op (any op if "") were made.
func (s *hookStore) count(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.calls {
		if op == "" || c.Op == op {
			n++
		}
	}
	return n
}

func (s *hookStore) do(ctx context.Context, c call, fn func() error) error {
	s.mu.Lock()
	s.calls = append(s.calls, c)
	before, after := s.before, s.after
	s.mu.Unlock()
	if before != nil {
		if err := before(ctx, c); err != nil {
			return err
		}
	}
	err := fn()
	if after != nil {
		err = after(ctx, c, err)
	}
	return err
}

func (s *hookStore) Stat(ctx context.Context, key string) (info backend.ObjectInfo, err error) {
	err = s.do(ctx, call{Op: faulty.OpStat, Key: key}, func() error {
		info, err = s.inner.Stat(ctx, key)
		return err
	})
	return info, err
}

func (s *hookStore) Get(ctx context.Context, key string, off, n int64, ifMatch string) (body io.ReadCloser, err error) {
	err = s.do(ctx, call{Op: faulty.OpGet, Key: key}, func() error {
		body, err = s.inner.Get(ctx, key, off, n, ifMatch)
		return err
	})
	return body, err
}

func (s *hookStore) Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string, cond backend.Cond) (info backend.ObjectInfo, err error) {
	err = s.do(ctx, call{Op: faulty.OpPut, Key: key, Cond: cond}, func() error {
		info, err = s.inner.Put(ctx, key, body, size, meta, cond)
		return err
	})
	return info, err
}

// PutDelta is recorded with the base as its If-Match. The faulty store below
// forwards it to the dir store, which is sent the whole body.
func (s *hookStore) PutDelta(ctx context.Context, key string, body io.ReaderAt, size int64, meta map[string]string, base string, same []backend.Range) (res backend.DeltaResult, err error) {
	err = s.do(ctx, call{Op: faulty.OpPutDelta, Key: key, Cond: backend.Cond{IfMatch: base}, Same: same}, func() error {
		res, err = backend.PutDelta(ctx, s.inner, key, body, size, meta, base, same)
		return err
	})
	return res, err
}

func (s *hookStore) Copy(ctx context.Context, src, srcETag, dst string, cond backend.Cond) (info backend.ObjectInfo, err error) {
	err = s.do(ctx, call{Op: faulty.OpCopy, Key: dst, Cond: cond, Src: src, SrcETag: srcETag}, func() error {
		info, err = s.inner.Copy(ctx, src, srcETag, dst, cond)
		return err
	})
	return info, err
}

func (s *hookStore) Delete(ctx context.Context, key, ifMatch string) error {
	return s.do(ctx, call{Op: faulty.OpDelete, Key: key, IfMatch: ifMatch}, func() error {
		return s.inner.Delete(ctx, key, ifMatch)
	})
}

// gate holds the calls that match until it is opened (or the call's ctx
// ends), and reports each held call on entered.
type gate struct {
	open    chan struct{}
	once    sync.Once
	entered chan call
}

func newGate() *gate { return &gate{open: make(chan struct{}), entered: make(chan call, 100)} }

func (g *gate) release() { g.once.Do(func() { close(g.open) }) }

// hold blocks c until the gate opens; it fails with ctx's error if ctx ends
// first.
func (g *gate) hold(ctx context.Context, c call) error {
	g.entered <- c
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s %q: %w", c.Op, c.Key, ctx.Err())
	}
}

// wait returns the next held call, failing the test after a while.
func (g *gate) wait(t *testing.T) call {
	t.Helper()
	select {
	case c := <-g.entered:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no call reached the gate")
		return call{}
	}
}

// machine is one nimbus instance: its own DB and staging folder, a journal,
// and a store over the shared remote folder.
type machine struct {
	t      *testing.T
	host   string
	db     *bbolt.DB
	stage  string
	faulty *faulty.Faulty
	hooks  *hookStore
	j      *Journal

	mu      sync.Mutex
	results []Result
	stopRun func()
}

// newMachine opens a journal named host over the remote folder root.
func newMachine(t *testing.T, root, host string, opts ...func(*Config)) *machine {
	t.Helper()
	tmp := t.TempDir()
	db, err := bbolt.Open(filepath.Join(tmp, "nimbus.db"), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Error(err)
		}
	})
	store, err := dir.New(root)
	if err != nil {
		t.Fatal(err)
	}
	f := faulty.New(store)
	m := &machine{t: t, host: host, db: db, stage: filepath.Join(tmp, "staging"), faulty: f, hooks: &hookStore{inner: f}}
	m.open(opts...)
	return m
}

// open (re)opens the machine's journal on its DB and staging folder, as a
// restart does. The previous Journal, if any, is dropped without Close.
func (m *machine) open(opts ...func(*Config)) {
	m.t.Helper()
	cfg := Config{
		DB:          m.db,
		Dir:         m.stage,
		Store:       m.hooks,
		Host:        m.host,
		Concurrency: 4,
		MinBackoff:  10 * time.Millisecond,
		MaxBackoff:  50 * time.Millisecond,
		UploadDelay: -1, // uploads start at once unless a test sets one
		SpareFiles:  -1, // tests count staged files; spare_test.go has the spares
		Now:         func() time.Time { return t0 },
		Logger:      slog.New(slog.NewTextHandler(m.t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})).With("host", m.host),
		Applied: func(r Result) {
			m.mu.Lock()
			defer m.mu.Unlock()
			m.results = append(m.results, r)
		},
	}
	for _, o := range opts {
		o(&cfg)
	}
	j, err := Open(cfg)
	if err != nil {
		m.t.Fatal(err)
	}
	m.j = j
}

// run starts the uploader; it is stopped by stop or at the end of the test.
func (m *machine) run() {
	m.t.Helper()
	if m.stopRun != nil {
		m.t.Fatal("already running")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	j := m.j
	go func() {
		defer close(done)
		j.Run(ctx)
	}()
	var once sync.Once
	m.stopRun = func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	m.t.Cleanup(m.stopRun)
}

// kill stops Run abruptly, as a crash would (in-flight calls are
// cancelled), and forgets the Journal without closing it.
func (m *machine) kill() {
	if m.stopRun != nil {
		m.stopRun()
		m.stopRun = nil
	}
	m.j = nil
}

// file writes content to a new staging file and returns its path.
func (m *machine) file(content string) string {
	m.t.Helper()
	f, err := m.j.StagingFile()
	if err != nil {
		m.t.Fatal(err)
	}
	if _, err := f.WriteString(content); err != nil {
		m.t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		m.t.Fatal(err)
	}
	return f.Name()
}

func (m *machine) commit(ops ...Op) {
	m.t.Helper()
	if err := m.j.Commit(ops...); err != nil {
		m.t.Fatal(err)
	}
}

// put commits a PutFile of content on base.
func (m *machine) put(key, content string, b Base) {
	m.t.Helper()
	m.commit(Op{Kind: PutFile, Key: key, Staged: m.file(content), Base: b})
}

func (m *machine) waitIdle() {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := m.j.WaitIdle(ctx); err != nil {
		m.t.Fatal(err)
	}
}

func (m *machine) resultList() []Result {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Result(nil), m.results...)
}

// stagedFiles lists the files left in the staging folder.
func (m *machine) stagedFiles() []string {
	m.t.Helper()
	des, err := os.ReadDir(m.stage)
	if err != nil {
		m.t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

// assertNoStagedLeft checks that the staging folder is empty.
func (m *machine) assertNoStagedLeft() {
	m.t.Helper()
	if left := m.stagedFiles(); len(left) != 0 {
		m.t.Errorf("%s: staged files left: %v", m.host, left)
	}
}

// remote is a direct handle on the shared remote folder: another machine
// editing it, and the test's view of it.
type remote struct {
	t     *testing.T
	root  string
	store *dir.Store
}

func newRemote(t *testing.T) *remote {
	t.Helper()
	root := t.TempDir()
	s, err := dir.New(root)
	if err != nil {
		t.Fatal(err)
	}
	return &remote{t: t, root: root, store: s}
}

// put writes content to key under cond, with meta.
func (r *remote) put(key, content string, cond backend.Cond, meta map[string]string) backend.ObjectInfo {
	r.t.Helper()
	info, err := r.store.Put(context.Background(), key, strings.NewReader(content), int64(len(content)), meta, cond)
	if err != nil {
		r.t.Fatal(err)
	}
	return info
}

func (r *remote) del(key string) {
	r.t.Helper()
	if err := r.store.Delete(context.Background(), key, ""); err != nil {
		r.t.Fatal(err)
	}
}

func (r *remote) stat(key string) backend.ObjectInfo {
	r.t.Helper()
	info, err := r.store.Stat(context.Background(), key)
	if err != nil {
		r.t.Fatal(err)
	}
	return info
}

// files returns every object (not directory markers) and its content.
func (r *remote) files() map[string]string {
	r.t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	err := r.store.ListFlat(ctx, "", func(p backend.Page) error {
		for _, o := range p.Objects {
			if strings.HasSuffix(o.Key, "/") {
				continue
			}
			rc, err := r.store.Get(ctx, o.Key, 0, -1, "")
			if err != nil {
				return err
			}
			b, err := io.ReadAll(rc)
			if cerr := rc.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			out[o.Key] = string(b)
		}
		return nil
	})
	if err != nil {
		r.t.Fatal(err)
	}
	return out
}

// assertFiles checks that the remote holds exactly want, byte for byte:
// nothing lost, nothing extra.
func (r *remote) assertFiles(want map[string]string) {
	r.t.Helper()
	got := r.files()
	var problems []string
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("missing %q (want %q)", k, w))
		case !bytes.Equal([]byte(g), []byte(w)):
			problems = append(problems, fmt.Sprintf("%q = %q, want %q", k, g, w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			problems = append(problems, fmt.Sprintf("unexpected %q = %q", k, g))
		}
	}
	sort.Strings(problems)
	if len(problems) > 0 {
		r.t.Errorf("remote content wrong:\n  %s", strings.Join(problems, "\n  "))
	}
}

func shaOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
