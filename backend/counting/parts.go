package counting

import (
	"context"
	"io"

	"github.com/nimbus-fs/nimbus/backend"
)

// UploadPart counts the parts sent by backend.PartUploader.UploadPart
// (their bytes count in BytesOut); the CompleteUpload that makes their
// object visible counts one PutObject, as a Put does.
const UploadPart = "UploadPart"

var _ backend.PartUploader = (*Counting)(nil)

// PartSize is the decorated store's, or 0 when it takes no parts.
func (c *Counting) PartSize() int64 { return backend.PartSize(c.inner) }

// CreateUpload forwards, counting nothing: nothing is written yet.
func (c *Counting) CreateUpload(ctx context.Context, key string, meta map[string]string) (string, error) {
	p, err := backend.PartsFor(c.inner, key)
	if err != nil {
		return "", err
	}
	return p.CreateUpload(ctx, key, meta)
}

// UploadPart counts one UploadPart and size bytes out.
func (c *Counting) UploadPart(ctx context.Context, key, uploadID string, num int, body io.ReaderAt, off, size int64) (backend.Part, error) {
	p, err := backend.PartsFor(c.inner, key)
	if err != nil {
		return backend.Part{}, err
	}
	c.uploadPart.Add(1)
	c.bytesOut.Add(size)
	return p.UploadPart(ctx, key, uploadID, num, body, off, size)
}

// CompleteUpload counts one PutObject.
func (c *Counting) CompleteUpload(ctx context.Context, key, uploadID string, parts []backend.Part, cond backend.Cond) (backend.ObjectInfo, error) {
	p, err := backend.PartsFor(c.inner, key)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	c.put.Add(1)
	return p.CompleteUpload(ctx, key, uploadID, parts, cond)
}

// ListUploads forwards, counting nothing (a listing of uploads, not of
// objects).
func (c *Counting) ListUploads(ctx context.Context, key string) ([]backend.Upload, error) {
	p, err := backend.PartsFor(c.inner, key)
	if err != nil {
		return nil, err
	}
	return p.ListUploads(ctx, key)
}

// AbortUpload forwards, counting nothing.
func (c *Counting) AbortUpload(ctx context.Context, key, uploadID string) error {
	p, err := backend.PartsFor(c.inner, key)
	if err != nil {
		return err
	}
	return p.AbortUpload(ctx, key, uploadID)
}
