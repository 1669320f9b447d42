package health

import (
	"context"
	"fmt"
	"io"

	"github.com/nimbus-fs/nimbus/backend"
)

var _ backend.PartUploader = (*Checker)(nil)

// parts returns the wrapped store's PartUploader, or an error for a store
// that takes no parts (PartSize 0 said so).
func (c *Checker) parts(key string) (backend.PartUploader, error) {
	p, ok := backend.Parts(c.inner)
	if !ok {
		return nil, fmt.Errorf("multipart upload of %q: %s takes no parts", key, c.inner)
	}
	return p, nil
}

// PartSize is the wrapped store's, or 0 when it takes no parts.
func (c *Checker) PartSize() int64 {
	if p, ok := backend.Parts(c.inner); ok {
		return p.PartSize()
	}
	return 0
}

// CreateUpload forwards; while offline it fails at once, like every call.
func (c *Checker) CreateUpload(ctx context.Context, key string, meta map[string]string) (id string, err error) {
	p, err := c.parts(key)
	if err != nil {
		return "", err
	}
	err = c.call(func() error { id, err = p.CreateUpload(ctx, key, meta); return err })
	return id, err
}

// UploadPart forwards; while offline it fails at once.
func (c *Checker) UploadPart(ctx context.Context, key, uploadID string, num int, body io.ReaderAt, off, size int64) (part backend.Part, err error) {
	p, err := c.parts(key)
	if err != nil {
		return backend.Part{}, err
	}
	err = c.call(func() error { part, err = p.UploadPart(ctx, key, uploadID, num, body, off, size); return err })
	return part, err
}

// CompleteUpload forwards; while offline it fails at once.
func (c *Checker) CompleteUpload(ctx context.Context, key, uploadID string, parts []backend.Part, cond backend.Cond) (info backend.ObjectInfo, err error) {
	p, err := c.parts(key)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	err = c.call(func() error { info, err = p.CompleteUpload(ctx, key, uploadID, parts, cond); return err })
	return info, err
}

// ListUploads forwards; while offline it fails at once.
func (c *Checker) ListUploads(ctx context.Context, key string) (ups []backend.Upload, err error) {
	p, err := c.parts(key)
	if err != nil {
		return nil, err
	}
	err = c.call(func() error { ups, err = p.ListUploads(ctx, key); return err })
	return ups, err
}

// AbortUpload forwards; while offline it fails at once.
func (c *Checker) AbortUpload(ctx context.Context, key, uploadID string) error {
	p, err := c.parts(key)
	if err != nil {
		return err
	}
	return c.call(func() error { return p.AbortUpload(ctx, key, uploadID) })
}
