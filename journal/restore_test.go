package journal

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/integration/wait"
)

// versionedStore is a tiny in-memory versioned bucket: every write adds a
// version, a delete adds a delete marker, and a copy of a version gets the
// version's ETag (as S3 gives a single-part copy).
type versionedStore struct {
	mu      sync.Mutex
	objs    map[string][]memVersion // oldest first; GUARDED_BY(mu)
	seq     int                     // GUARDED_BY(mu)
	offline bool                    // GUARDED_BY(mu)
	copies  int                     // CopyVersion calls; GUARDED_BY(mu)
}

type memVersion struct {
	id, etag string
	data     []byte
	meta     map[string]string
	deleted  bool
}

var _ versionCopier = (*versionedStore)(nil)

func newVersionedStore() *versionedStore {
	return &versionedStore{objs: map[string][]memVersion{}}
}

func (s *versionedStore) setOffline(off bool) {
	s.mu.Lock()
	s.offline = off
	s.mu.Unlock()
}

// add appends a version of key; call with s.mu held.
func (s *versionedStore) addLocked(key string, v memVersion) memVersion {
	s.seq++
	v.id = fmt.Sprintf("v%d", s.seq)
	if v.etag == "" && !v.deleted {
		sum := md5.Sum(v.data)
		v.etag = hex.EncodeToString(sum[:])
	}
	s.objs[key] = append(s.objs[key], v)
	return v
}

// put writes a version directly, as another client would.
func (s *versionedStore) put(key, data string) memVersion {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addLocked(key, memVersion{data: []byte(data)})
}

func (s *versionedStore) del(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addLocked(key, memVersion{deleted: true})
}

func (s *versionedStore) current(key string) (memVersion, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.currentLocked(key)
}

func (s *versionedStore) currentLocked(key string) (memVersion, bool) {
	vs := s.objs[key]
	if len(vs) == 0 || vs[len(vs)-1].deleted {
		return memVersion{}, false
	}
	return vs[len(vs)-1], true
}

func (s *versionedStore) versions(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.objs[key])
}

func (s *versionedStore) checkLocked(key string, c backend.Cond) error {
	if s.offline {
		return backend.ErrOffline
	}
	cur, ok := s.currentLocked(key)
	switch {
	case c.IfNoneMatch && ok, c.IfMatch != "" && (!ok || cur.etag != c.IfMatch):
		return fmt.Errorf("%q: %w", key, backend.ErrPrecondition)
	}
	return nil
}

func (v memVersion) info(key string) backend.ObjectInfo {
	return backend.ObjectInfo{Key: key, Size: int64(len(v.data)), ETag: v.etag, Meta: v.meta}
}

func (s *versionedStore) Stat(_ context.Context, key string) (backend.ObjectInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.offline {
		return backend.ObjectInfo{}, backend.ErrOffline
	}
	cur, ok := s.currentLocked(key)
	if !ok {
		return backend.ObjectInfo{}, fmt.Errorf("%q: %w", key, backend.ErrNotFound)
	}
	return cur.info(key), nil
}

func (s *versionedStore) Get(ctx context.Context, key string, off, n int64, ifMatch string) (io.ReadCloser, error) {
	return nil, fmt.Errorf("versionedStore: Get is not used by restores")
}

func (s *versionedStore) Put(_ context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string, c backend.Cond) (backend.ObjectInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkLocked(key, c); err != nil {
		return backend.ObjectInfo{}, err
	}
	data, err := io.ReadAll(io.LimitReader(body, size))
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	return s.addLocked(key, memVersion{data: data, meta: meta}).info(key), nil
}

func (s *versionedStore) Copy(_ context.Context, src, srcETag, dst string, c backend.Cond) (backend.ObjectInfo, error) {
	return backend.ObjectInfo{}, fmt.Errorf("versionedStore: Copy is not used by restores")
}

func (s *versionedStore) Delete(_ context.Context, key, ifMatch string) error {
	return fmt.Errorf("versionedStore: Delete is not used by restores")
}

func (s *versionedStore) findLocked(key, id string) (memVersion, bool) {
	for _, v := range s.objs[key] {
		if v.id == id && !v.deleted {
			return v, true
		}
	}
	return memVersion{}, false
}

func (s *versionedStore) StatVersion(_ context.Context, key, id string) (backend.ObjectInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.offline {
		return backend.ObjectInfo{}, backend.ErrOffline
	}
	v, ok := s.findLocked(key, id)
	if !ok {
		return backend.ObjectInfo{}, fmt.Errorf("%q@%s: %w", key, id, backend.ErrNotFound)
	}
	return v.info(key), nil
}

func (s *versionedStore) CopyVersion(_ context.Context, src, id, dst string, c backend.Cond) (backend.ObjectInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.offline {
		return backend.ObjectInfo{}, backend.ErrOffline
	}
	s.copies++
	v, ok := s.findLocked(src, id)
	if !ok {
		return backend.ObjectInfo{}, fmt.Errorf("%q@%s: %w", src, id, backend.ErrNotFound)
	}
	if err := s.checkLocked(dst, c); err != nil {
		return backend.ObjectInfo{}, err
	}
	return s.addLocked(dst, memVersion{data: v.data, meta: v.meta, etag: v.etag}).info(dst), nil
}

// restoreMachine is a machine whose journal writes to st.
func restoreMachine(t *testing.T, st *versionedStore) *machine {
	return newMachine(t, t.TempDir(), "host", func(c *Config) { c.Store = st })
}

func (m *machine) reopenOn(st *versionedStore) {
	m.open(func(c *Config) { c.Store = st })
}

func wantContent(t *testing.T, st *versionedStore, key, want string) memVersion {
	t.Helper()
	cur, ok := st.current(key)
	if !ok || !bytes.Equal(cur.data, []byte(want)) {
		t.Fatalf("%s holds %q (present %v); want %q", key, cur.data, ok, want)
	}
	return cur
}

func onlyResult(t *testing.T, m *machine) Result {
	t.Helper()
	rs := m.resultList()
	if len(rs) != 1 {
		t.Fatalf("results = %+v; want one", rs)
	}
	return rs[0]
}

// TestRestoreVersion: a restore conditioned on the current version makes
// the old version current with one server-side copy, and Applied reports
// the new object.
func TestRestoreVersion(t *testing.T) {
	st := newVersionedStore()
	v1 := st.put("f", "first")
	v2 := st.put("f", "second")
	m := restoreMachine(t, st)
	m.commit(Op{Kind: Restore, Key: "f", Version: v1.id, Base: Base{Exists: true, ETag: v2.etag}})
	m.run()
	m.waitIdle()
	cur := wantContent(t, st, "f", "first")
	r := onlyResult(t, m)
	if r.Dropped || r.Conflict != nil || r.Info.ETag != cur.etag || r.Op.Kind != Restore || r.Op.Version != v1.id {
		t.Fatalf("result = %+v; want the restored object", r)
	}
	if n := st.versions("f"); n != 3 {
		t.Fatalf("f has %d versions; want 3: a restore adds one and removes none", n)
	}
}

// TestRestoreChanged: when the file changed after its versions were listed,
// the restore changes nothing and says why.
func TestRestoreChanged(t *testing.T) {
	st := newVersionedStore()
	v1 := st.put("f", "first")
	v2 := st.put("f", "second")
	st.put("f", "changed elsewhere")
	m := restoreMachine(t, st)
	m.commit(Op{Kind: Restore, Key: "f", Version: v1.id, Base: Base{Exists: true, ETag: v2.etag}})
	m.run()
	m.waitIdle()
	wantContent(t, st, "f", "changed elsewhere")
	r := onlyResult(t, m)
	if !r.Dropped || r.Conflict == nil || r.Conflict.Reason != ReasonRestoreChanged {
		t.Fatalf("result = %+v; want dropped with %q", r, ReasonRestoreChanged)
	}
	if n := st.versions("f"); n != 3 {
		t.Fatalf("f has %d versions; want 3: nothing written", n)
	}
	if cs := m.j.Conflicts(); len(cs) != 1 || cs[0].Reason != ReasonRestoreChanged {
		t.Fatalf("conflicts = %+v; want the refused restore", cs)
	}
}

// TestUndelete: a restore with no base brings a deleted file back, and
// never overwrites a file that exists again.
func TestUndelete(t *testing.T) {
	st := newVersionedStore()
	v1 := st.put("gone", "keep me")
	st.del("gone")
	w1 := st.put("back", "old")
	st.del("back")
	st.put("back", "new file of that name")
	m := restoreMachine(t, st)
	m.commit(Op{Kind: Restore, Key: "gone", Version: v1.id}, Op{Kind: Restore, Key: "back", Version: w1.id, Group: 1})
	m.run()
	m.waitIdle()
	wantContent(t, st, "gone", "keep me")
	wantContent(t, st, "back", "new file of that name")
	for _, r := range m.resultList() {
		switch r.Op.Key {
		case "gone":
			if r.Dropped {
				t.Errorf("undelete of gone dropped: %+v", r.Conflict)
			}
		case "back":
			if !r.Dropped || r.Conflict == nil || r.Conflict.Reason != ReasonRestoreExists {
				t.Errorf("undelete over an existing file = %+v; want dropped with %q", r, ReasonRestoreExists)
			}
		}
	}
}

// TestRestoreOfflineAndCrash: a restore committed offline waits in the
// journal across a crash and runs when the store is back; one whose copy
// landed just before a crash is recognised on replay, not refused and not
// copied again.
func TestRestoreOfflineAndCrash(t *testing.T) {
	st := newVersionedStore()
	v1 := st.put("f", "first")
	v2 := st.put("f", "second")
	st.setOffline(true)
	m := restoreMachine(t, st)
	m.commit(Op{Kind: Restore, Key: "f", Version: v1.id, Base: Base{Exists: true, ETag: v2.etag}})
	m.run()
	wait.Until(t, 10*time.Second, "an attempt fails offline", func() bool { return m.j.Stats().Offline })
	m.kill()
	st.setOffline(false)
	wantContent(t, st, "f", "second")
	m.reopenOn(st)
	m.run()
	m.waitIdle()
	wantContent(t, st, "f", "first")
	if r := onlyResult(t, m); r.Dropped {
		t.Fatalf("result = %+v; want restored", r)
	}

	// The copy lands, then the machine dies before recording it.
	g1 := st.put("g", "one")
	g2 := st.put("g", "two")
	m2 := restoreMachine(t, st)
	st.setOffline(true)
	m2.commit(Op{Kind: Restore, Key: "g", Version: g1.id, Base: Base{Exists: true, ETag: g2.etag}})
	m2.kill()
	st.setOffline(false)
	if _, err := st.CopyVersion(context.Background(), "g", g1.id, "g", backend.Cond{IfMatch: g2.etag}); err != nil {
		t.Fatal(err)
	}
	before := st.versions("g")
	m2.reopenOn(st)
	m2.run()
	m2.waitIdle()
	wantContent(t, st, "g", "one")
	if r := onlyResult(t, m2); r.Dropped || r.Conflict != nil {
		t.Fatalf("replayed restore = %+v; want it recognised as done", r)
	}
	if n := st.versions("g"); n != before {
		t.Fatalf("g has %d versions after the replay; want %d (no second copy)", n, before)
	}
}

// TestRestoreValidation: a restore needs a version, and a file key.
func TestRestoreValidation(t *testing.T) {
	m := restoreMachine(t, newVersionedStore())
	for _, op := range []Op{{Kind: Restore, Key: "f"}, {Kind: Restore, Key: "d/", Version: "v1"}} {
		if err := m.j.Commit(op); err == nil {
			t.Errorf("Commit(%+v) accepted", op)
		}
	}
}
