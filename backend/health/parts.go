package health

import (
	"context"
	"io"

	"github.com/nimbus-fs/nimbus/backend"
)

var _ backend.PartUploader = (*Checker)(nil)

// PartSize is the wrapped store's, or 0 when it takes no parts.
func (c *Checker) PartSize() int64 { return backend.PartSize(c.inner) }

// CreateUpload forwards; while offline it fails at once, like every call.
func (c *Checker) CreateUpload(ctx context.Context, key string, meta map[string]string) (id string, err error) {
	p, err := backend.PartsFor(c.inner, key)
	if err != nil {
		return "", err
	}
	err = c.call(func() error { id, err = p.CreateUpload(ctx, key, meta); return err })
	return id, err
}

// UploadPart forwards; while offline it fails at once.
func (c *Checker) UploadPart(ctx context.Context, key, uploadID string, num int, body io.ReaderAt, off, size int64) (part backend.Part, err error) {
	p, err := backend.PartsFor(c.inner, key)
	if err != nil {
		return backend.Part{}, err
	}
	err = c.call(func() error { part, err = p.UploadPart(ctx, key, uploadID, num, body, off, size); return err })
	return part, err
}

// CompleteUpload forwards; while offline it fails at once.
func (c *Checker) CompleteUpload(ctx context.Context, key, uploadID string, parts []backend.Part, cond backend.Cond) (info backend.ObjectInfo, err error) {
	p, err := backend.PartsFor(c.inner, key)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	err = c.call(func() error { info, err = p.CompleteUpload(ctx, key, uploadID, parts, cond); return err })
	return info, err
}

// ListUploads forwards; while offline it fails at once.
func (c *Checker) ListUploads(ctx context.Context, key string) (ups []backend.Upload, err error) {
	p, err := backend.PartsFor(c.inner, key)
	if err != nil {
		return nil, err
	}
	err = c.call(func() error { ups, err = p.ListUploads(ctx, key); return err })
	return ups, err
}

// AbortUpload forwards; while offline it fails at once.
func (c *Checker) AbortUpload(ctx context.Context, key, uploadID string) error {
	p, err := backend.PartsFor(c.inner, key)
	if err != nil {
		return err
	}
	return c.call(func() error { return p.AbortUpload(ctx, key, uploadID) })
}
