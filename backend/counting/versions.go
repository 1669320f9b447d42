package counting

import (
	"context"
	"fmt"
	"io"

	"github.com/nimbus-fs/nimbus/backend"
)

// The optional version interfaces, forwarded to the decorated store. Reads
// and copies of a version count as the HeadObject, GetObject and CopyObject
// they are; Versioning and ListVersions count nothing (they are rare, and
// the counters mirror what nimbus status shows of everyday traffic).

var (
	_ backend.VersionLister = (*Counting)(nil)
	_ backend.VersionReader = (*Counting)(nil)
	_ backend.VersionCopier = (*Counting)(nil)
)

func (c *Counting) Versioning(ctx context.Context) (bool, error) {
	v, ok := c.inner.(backend.VersionLister)
	if !ok {
		return false, nil // a store that keeps no versions
	}
	return v.Versioning(ctx)
}

func (c *Counting) ListVersions(ctx context.Context, prefix string, fn func([]backend.Version) error) error {
	v, ok := c.inner.(backend.VersionLister)
	if !ok {
		return fmt.Errorf("list versions %q: %w", prefix, backend.ErrNoVersioning)
	}
	return v.ListVersions(ctx, prefix, fn)
}

func (c *Counting) StatVersion(ctx context.Context, key, id string) (backend.ObjectInfo, error) {
	v, ok := c.inner.(backend.VersionReader)
	if !ok {
		return backend.ObjectInfo{}, fmt.Errorf("stat version %s of %q: %w", id, key, backend.ErrNoVersioning)
	}
	c.head.Add(1)
	return v.StatVersion(ctx, key, id)
}

func (c *Counting) GetVersion(ctx context.Context, key, id string, off, n int64) (io.ReadCloser, error) {
	v, ok := c.inner.(backend.VersionReader)
	if !ok {
		return nil, fmt.Errorf("get version %s of %q: %w", id, key, backend.ErrNoVersioning)
	}
	c.get.Add(1)
	rc, err := v.GetVersion(ctx, key, id, off, n)
	if err != nil {
		return nil, err
	}
	return &countingBody{ReadCloser: rc, n: &c.bytesIn}, nil
}

func (c *Counting) CopyVersion(ctx context.Context, src, id, dst string, cond backend.Cond) (backend.ObjectInfo, error) {
	v, ok := c.inner.(backend.VersionCopier)
	if !ok {
		return backend.ObjectInfo{}, fmt.Errorf("copy version %s of %q: %w", id, src, backend.ErrNoVersioning)
	}
	c.copy.Add(1)
	return v.CopyVersion(ctx, src, id, dst, cond)
}
