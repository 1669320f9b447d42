// Package counting is a Backend decorator that counts requests by the S3
// operation each call maps to, and the bytes moved. `nimbus status` reports
// the counts, and tests use them to prove the promises about cost ("a
// listing costs ceil(n/1000) ListObjectsV2 requests and no HeadObject").
//
// Counts are of Backend calls, not HTTP requests: requests a store makes
// internally (the S3 store's HeadObject before a conditional Delete or a
// Copy, SDK retries) are not seen here. The exception is PutDelta, whose
// store reports the parts it copied server-side and the bytes it sent.
package counting

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
)

// Counter names in Snapshot.
const (
	ListObjectsV2  = "ListObjectsV2"  // one per page delivered (List and ListFlat)
	HeadObject     = "HeadObject"     // Stat
	GetObject      = "GetObject"      // Get
	PutObject      = "PutObject"      // Put and PutDelta
	UploadPartCopy = "UploadPartCopy" // parts PutDelta copied server-side
	CopyObject     = "CopyObject"     // Copy
	DeleteObject   = "DeleteObject"   // Delete
	BytesIn        = "bytes_in"       // bytes read by callers from Get bodies
	BytesOut       = "bytes_out"      // bytes uploaded: Put's size, PutDelta's bytes sent
	BytesCopied    = "bytes_copied"   // bytes PutDelta had copied server-side instead
)

// Counting wraps a Backend and counts its use. It is safe for concurrent use.
type Counting struct {
	inner backend.Backend

	list, head, get, put, copy, del atomic.Int64
	copyPart, uploadPart            atomic.Int64
	bytesIn, bytesOut, bytesCopied  atomic.Int64
}

var (
	_ backend.Backend     = (*Counting)(nil)
	_ backend.Presigner   = (*Counting)(nil)
	_ backend.DeltaPutter = (*Counting)(nil)
)

// New returns a counting decorator around b, with all counts at zero.
func New(b backend.Backend) *Counting {
	return &Counting{inner: b}
}

// Unwrap returns the decorated Backend.
func (c *Counting) Unwrap() backend.Backend { return c.inner }

// Snapshot returns the current counts, every counter included (zero or
// not). Counters are read one by one, so a snapshot taken during traffic is
// not one instant.
func (c *Counting) Snapshot() map[string]int64 {
	return map[string]int64{
		ListObjectsV2:  c.list.Load(),
		HeadObject:     c.head.Load(),
		GetObject:      c.get.Load(),
		PutObject:      c.put.Load(),
		UploadPartCopy: c.copyPart.Load(),
		UploadPart:     c.uploadPart.Load(),
		CopyObject:     c.copy.Load(),
		DeleteObject:   c.del.Load(),
		BytesIn:        c.bytesIn.Load(),
		BytesOut:       c.bytesOut.Load(),
		BytesCopied:    c.bytesCopied.Load(),
	}
}

// List counts one ListObjectsV2 per page delivered to fn, plus one when the
// listing fails on its own (the request that failed).
func (c *Counting) List(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	return c.countPages(fn, func(fn func(backend.Page) error) error { return c.inner.List(ctx, prefix, fn) })
}

// ListFlat counts like List.
func (c *Counting) ListFlat(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	return c.countPages(fn, func(fn func(backend.Page) error) error { return c.inner.ListFlat(ctx, prefix, fn) })
}

func (c *Counting) countPages(fn func(backend.Page) error, list func(func(backend.Page) error) error) error {
	var fnFailed atomic.Bool // fn may run on a goroutine of the store's
	err := list(func(p backend.Page) error {
		c.list.Add(1)
		if err := fn(p); err != nil {
			fnFailed.Store(true)
			return err
		}
		return nil
	})
	if err != nil && !fnFailed.Load() {
		c.list.Add(1)
	}
	return err
}

// Stat counts one HeadObject.
func (c *Counting) Stat(ctx context.Context, key string) (backend.ObjectInfo, error) {
	c.head.Add(1)
	return c.inner.Stat(ctx, key)
}

// Get counts one GetObject, and the body's bytes as the caller reads them.
func (c *Counting) Get(ctx context.Context, key string, off, n int64, ifMatch string) (io.ReadCloser, error) {
	c.get.Add(1)
	rc, err := c.inner.Get(ctx, key, off, n, ifMatch)
	if err != nil {
		return nil, err
	}
	return &countingBody{ReadCloser: rc, n: &c.bytesIn}, nil
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// Put counts one PutObject and size bytes out, whether or not it succeeds
// (a refused conditional put has still sent its body).
func (c *Counting) Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string, cond backend.Cond) (backend.ObjectInfo, error) {
	c.put.Add(1)
	c.bytesOut.Add(size)
	return c.inner.Put(ctx, key, body, size, meta, cond)
}

// PutDelta counts one PutObject, and what the store reports it did, whether
// or not it succeeds: the bytes it sent, and the parts and bytes it copied
// server-side. A store that is not a backend.DeltaPutter is sent the whole
// body with Put (see backend.PutDelta), which counts as Put does.
func (c *Counting) PutDelta(ctx context.Context, key string, body io.ReaderAt, size int64, meta map[string]string, base string, same []backend.Range) (backend.DeltaResult, error) {
	c.put.Add(1)
	res, err := backend.PutDelta(ctx, c.inner, key, body, size, meta, base, same)
	c.bytesOut.Add(res.Sent)
	c.bytesCopied.Add(res.Copied)
	c.copyPart.Add(int64(res.CopyParts))
	return res, err
}

// Copy counts one CopyObject.
func (c *Counting) Copy(ctx context.Context, src, srcETag, dst string, cond backend.Cond) (backend.ObjectInfo, error) {
	c.copy.Add(1)
	return c.inner.Copy(ctx, src, srcETag, dst, cond)
}

// Delete counts one DeleteObject.
func (c *Counting) Delete(ctx context.Context, key string, ifMatch string) error {
	c.del.Add(1)
	return c.inner.Delete(ctx, key, ifMatch)
}

// PresignGet delegates to the decorated store (it makes no request, so
// counts nothing). When that store cannot presign, it fails with an error
// wrapping errors.ErrUnsupported.
func (c *Counting) PresignGet(ctx context.Context, key string, expires time.Duration) (string, error) {
	p, ok := c.inner.(backend.Presigner)
	if !ok {
		return "", fmt.Errorf("presign %q: %s cannot make download links: %w", key, c.inner, errors.ErrUnsupported)
	}
	return p.PresignGet(ctx, key, expires)
}

// String names the decorated store.
func (c *Counting) String() string { return c.inner.String() }
