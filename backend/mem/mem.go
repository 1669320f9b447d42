// Package mem is an in-memory object store with S3's conditional
// semantics, for tests that need keys the dir: store refuses
// (".nimbus-…") or want to count requests by key. Each write gets a new
// ETag; listings carry no metadata, as S3's do. It counts requests by
// operation and key, and can be taken offline.
package mem

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
)

// Store is the in-memory store. It is safe for concurrent use.
type Store struct {
	mu      sync.Mutex
	objs    map[string]object // GUARDED_BY(mu)
	etags   int               // GUARDED_BY(mu)
	offline bool              // GUARDED_BY(mu)
	calls   map[string]int    // GUARDED_BY(mu): "Op key" → count
	failed  int               // GUARDED_BY(mu): writes refused by their condition
}

type object struct {
	data    []byte
	etag    string
	modTime time.Time
	meta    map[string]string
}

var _ backend.Backend = (*Store)(nil)

// New returns an empty store.
func New() *Store {
	return &Store{objs: make(map[string]object), calls: make(map[string]int)}
}

// SetOffline makes every call fail with backend.ErrOffline (true), or
// work again (false).
func (m *Store) SetOffline(off bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.offline = off
}

// Count returns how often op was called on key.
func (m *Store) Count(op, key string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.calls[op+" "+key]
}

// CountOp returns how often op was called, on any key.
func (m *Store) CountOp(op string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for k, v := range m.calls {
		if strings.HasPrefix(k, op+" ") {
			n += v
		}
	}
	return n
}

// FailedConds returns how many writes their condition refused.
func (m *Store) FailedConds() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.failed
}

// Content returns the object's bytes, and whether it exists.
func (m *Store) Content(key string) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objs[key]
	return o.data, ok
}

// PutString stores an object unconditionally, as another S3 client would;
// it panics if the store refuses (offline), which a test does not expect.
func (m *Store) PutString(key, data string) backend.ObjectInfo {
	info, err := m.Put(context.Background(), key, strings.NewReader(data), int64(len(data)), nil, backend.Cond{})
	if err != nil {
		panic(err)
	}
	return info
}

// enter counts a call and fails it while offline. Called with mu held.
func (m *Store) enter(op, key string) error {
	m.calls[op+" "+key]++
	if m.offline {
		return fmt.Errorf("%s %q: %w", op, key, backend.ErrOffline)
	}
	return nil
}

func (m *Store) checkCond(op, key string, cond backend.Cond) error {
	o, exists := m.objs[key]
	if (cond.IfNoneMatch && exists) || (cond.IfMatch != "" && (!exists || o.etag != cond.IfMatch)) {
		m.failed++
		return fmt.Errorf("%s %q: %w", op, key, backend.ErrPrecondition)
	}
	return nil
}

func (m *Store) info(key string, o object) backend.ObjectInfo {
	return backend.ObjectInfo{Key: key, Size: int64(len(o.data)), ETag: o.etag, ModTime: o.modTime, Meta: o.meta}
}

func (m *Store) List(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	return m.list("List", prefix, true, fn)
}

func (m *Store) ListFlat(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	return m.list("ListFlat", prefix, false, fn)
}

func (m *Store) list(op, prefix string, delimited bool, fn func(backend.Page) error) error {
	m.mu.Lock()
	if err := m.enter(op, prefix); err != nil {
		m.mu.Unlock()
		return err
	}
	var p backend.Page
	seen := make(map[string]bool)
	keys := make([]string, 0, len(m.objs))
	for k := range m.objs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		if i := strings.Index(k[len(prefix):], "/"); delimited && i >= 0 {
			if pfx := k[:len(prefix)+i+1]; !seen[pfx] {
				seen[pfx] = true
				p.Prefixes = append(p.Prefixes, pfx)
			}
			continue
		}
		o := m.info(k, m.objs[k])
		o.Meta = nil // listings carry no metadata
		p.Objects = append(p.Objects, o)
	}
	m.mu.Unlock()
	return fn(p)
}

func (m *Store) Stat(ctx context.Context, key string) (backend.ObjectInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("Stat", key); err != nil {
		return backend.ObjectInfo{}, err
	}
	o, ok := m.objs[key]
	if !ok {
		return backend.ObjectInfo{}, fmt.Errorf("stat %q: %w", key, backend.ErrNotFound)
	}
	return m.info(key, o), nil
}

func (m *Store) Get(ctx context.Context, key string, off, n int64, ifMatch string) (io.ReadCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("Get", key); err != nil {
		return nil, err
	}
	o, ok := m.objs[key]
	switch {
	case !ok:
		return nil, fmt.Errorf("get %q: %w", key, backend.ErrNotFound)
	case ifMatch != "" && o.etag != ifMatch:
		return nil, fmt.Errorf("get %q: %w", key, backend.ErrPrecondition)
	}
	data := o.data[min(off, int64(len(o.data))):]
	if n >= 0 && int64(len(data)) > n {
		data = data[:n]
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

func (m *Store) Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string, cond backend.Cond) (backend.ObjectInfo, error) {
	var data []byte
	if body != nil {
		var err error
		if data, err = io.ReadAll(io.LimitReader(body, size)); err != nil {
			return backend.ObjectInfo{}, err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("Put", key); err != nil {
		return backend.ObjectInfo{}, err
	}
	if err := m.checkCond("put", key, cond); err != nil {
		return backend.ObjectInfo{}, err
	}
	m.etags++
	o := object{data: data, etag: fmt.Sprintf("etag-%d", m.etags), modTime: time.Unix(1600000000+int64(m.etags), 0), meta: meta}
	m.objs[key] = o
	return m.info(key, o), nil
}

func (m *Store) Copy(ctx context.Context, src, srcETag, dst string, cond backend.Cond) (backend.ObjectInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("Copy", dst); err != nil {
		return backend.ObjectInfo{}, err
	}
	o, ok := m.objs[src]
	switch {
	case !ok:
		return backend.ObjectInfo{}, fmt.Errorf("copy %q: %w", src, backend.ErrNotFound)
	case srcETag != "" && o.etag != srcETag:
		return backend.ObjectInfo{}, fmt.Errorf("copy %q: %w", src, backend.ErrPrecondition)
	}
	if err := m.checkCond("copy", dst, cond); err != nil {
		return backend.ObjectInfo{}, err
	}
	m.objs[dst] = o // S3 keeps a single-part object's ETag
	return m.info(dst, o), nil
}

func (m *Store) Delete(ctx context.Context, key string, ifMatch string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("Delete", key); err != nil {
		return err
	}
	o, ok := m.objs[key]
	if !ok {
		return nil
	}
	if ifMatch != "" && o.etag != ifMatch {
		m.failed++
		return fmt.Errorf("delete %q: %w", key, backend.ErrPrecondition)
	}
	delete(m.objs, key)
	return nil
}

func (m *Store) String() string { return "mem:" }
