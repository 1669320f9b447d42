package health

import (
	"context"
	"fmt"
	"io"

	"github.com/nimbus-fs/nimbus/backend"
)

// The optional version interfaces, forwarded like every call: while offline
// they fail at once. A wrapped store without them fails with a plain error.

var (
	_ backend.VersionLister = (*Checker)(nil)
	_ backend.VersionReader = (*Checker)(nil)
	_ backend.VersionCopier = (*Checker)(nil)
)

func (c *Checker) Versioning(ctx context.Context) (on bool, err error) {
	v, ok := c.inner.(backend.VersionLister)
	if !ok {
		return false, nil // a store that keeps no versions
	}
	err = c.call(func() error { on, err = v.Versioning(ctx); return err })
	return on, err
}

func (c *Checker) ListVersions(ctx context.Context, prefix string, fn func([]backend.Version) error) error {
	v, ok := c.inner.(backend.VersionLister)
	if !ok {
		return fmt.Errorf("list versions %q: %w", prefix, backend.ErrNoVersioning)
	}
	return c.call(func() error { return v.ListVersions(ctx, prefix, fn) })
}

func (c *Checker) StatVersion(ctx context.Context, key, id string) (info backend.ObjectInfo, err error) {
	v, ok := c.inner.(backend.VersionReader)
	if !ok {
		return info, fmt.Errorf("stat version %s of %q: %w", id, key, backend.ErrNoVersioning)
	}
	err = c.call(func() error { info, err = v.StatVersion(ctx, key, id); return err })
	return info, err
}

func (c *Checker) GetVersion(ctx context.Context, key, id string, off, n int64) (r io.ReadCloser, err error) {
	v, ok := c.inner.(backend.VersionReader)
	if !ok {
		return nil, fmt.Errorf("get version %s of %q: %w", id, key, backend.ErrNoVersioning)
	}
	err = c.call(func() error { r, err = v.GetVersion(ctx, key, id, off, n); return err })
	return r, err
}

func (c *Checker) CopyVersion(ctx context.Context, src, id, dst string, cond backend.Cond) (info backend.ObjectInfo, err error) {
	v, ok := c.inner.(backend.VersionCopier)
	if !ok {
		return info, fmt.Errorf("copy version %s of %q: %w", id, src, backend.ErrNoVersioning)
	}
	err = c.call(func() error { info, err = v.CopyVersion(ctx, src, id, dst, cond); return err })
	return info, err
}
