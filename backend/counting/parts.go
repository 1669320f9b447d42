package counting

import (
	"context"
	"fmt"
	"io"

	"github.com/nimbus-fs/nimbus/backend"
)

// UploadPart counts the parts sent by backend.PartUploader.UploadPart
// (their bytes count in BytesOut); the CompleteUpload that makes their
// object visible counts one PutObject, as a Put does.
const UploadPart = "UploadPart"

var _ backend.PartUploader = (*Counting)(nil)

// errNoParts: the decorated store takes no parts (PartSize 0 said so).
func (c *Counting) errNoParts(key string) error {
	return fmt.Errorf("multipart upload of %q: %s takes no parts", key, c.inner)
}

// PartSize is the decorated store's, or 0 when it takes no parts.
func (c *Counting) PartSize() int64 {
	if p, ok := backend.Parts(c.inner); ok {
		return p.PartSize()
	}
	return 0
}

// CreateUpload forwards, counting nothing: nothing is written yet.
func (c *Counting) CreateUpload(ctx context.Context, key string, meta map[string]string) (string, error) {
	p, ok := backend.Parts(c.inner)
	if !ok {
		return "", c.errNoParts(key)
	}
	return p.CreateUpload(ctx, key, meta)
}

// UploadPart counts one UploadPart and size bytes out.
func (c *Counting) UploadPart(ctx context.Context, key, uploadID string, num int, body io.ReaderAt, off, size int64) (backend.Part, error) {
	p, ok := backend.Parts(c.inner)
	if !ok {
		return backend.Part{}, c.errNoParts(key)
	}
	c.uploadPart.Add(1)
	c.bytesOut.Add(size)
	return p.UploadPart(ctx, key, uploadID, num, body, off, size)
}

// CompleteUpload counts one PutObject.
func (c *Counting) CompleteUpload(ctx context.Context, key, uploadID string, parts []backend.Part, cond backend.Cond) (backend.ObjectInfo, error) {
	p, ok := backend.Parts(c.inner)
	if !ok {
		return backend.ObjectInfo{}, c.errNoParts(key)
	}
	c.put.Add(1)
	return p.CompleteUpload(ctx, key, uploadID, parts, cond)
}

// ListUploads forwards, counting nothing (a listing of uploads, not of
// objects).
func (c *Counting) ListUploads(ctx context.Context, key string) ([]backend.Upload, error) {
	p, ok := backend.Parts(c.inner)
	if !ok {
		return nil, c.errNoParts(key)
	}
	return p.ListUploads(ctx, key)
}

// AbortUpload forwards, counting nothing.
func (c *Counting) AbortUpload(ctx context.Context, key, uploadID string) error {
	p, ok := backend.Parts(c.inner)
	if !ok {
		return c.errNoParts(key)
	}
	return p.AbortUpload(ctx, key, uploadID)
}
