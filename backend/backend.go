// Package backend defines the small interface Nimbus needs from an object
// store, and the domain errors every implementation returns.
//
// Implementations live in their own packages (backend/s3, backend/dir) and
// must pass the conformance suite in backend/conformance. Cross-cutting
// behaviour (request counting, fault injection) is written as decorators that
// implement the same interface.
//
// Keys are full object keys ("photos/2024/a.jpg"). A key ending in "/" is a
// directory marker. ETags are opaque strings without surrounding quotes.
package backend

import (
	"context"
	"errors"
	"io"
	"time"
)

// Domain errors. Implementations wrap them with context
// (fmt.Errorf("get %q: %w", key, ErrNotFound)); callers test with errors.Is.
var (
	// ErrNotFound: the object (or, for List, nothing at all) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrPrecondition: an If-Match / If-None-Match condition failed (HTTP 412).
	ErrPrecondition = errors.New("precondition failed")
	// ErrConflict: a concurrent conflicting operation (HTTP 409); retryable.
	ErrConflict = errors.New("conflicting operation in progress")
	// ErrOffline: the store could not be reached (connection refused, DNS,
	// timeout). Retryable once the network is back.
	ErrOffline = errors.New("backend unreachable")
	// ErrAccess: the credentials were refused or lack permission (HTTP 401/403).
	ErrAccess = errors.New("access denied")
	// ErrNoBucket: the bucket (or dir: root folder) does not exist.
	ErrNoBucket = errors.New("bucket not found")
	// ErrInvalidKey: the store refuses the key (too long, bad encoding).
	ErrInvalidKey = errors.New("invalid key")
)

// ObjectInfo describes one object as a listing or a HEAD reports it.
type ObjectInfo struct {
	Key     string
	Size    int64
	ETag    string
	ModTime time.Time
	// Meta is user metadata (x-amz-meta-*), lower-case names without the
	// prefix. Listings leave it nil: S3 does not return it there.
	Meta map[string]string
}

// Page is one page of a delimited listing.
type Page struct {
	// Objects directly under the prefix, including the marker key equal to
	// the prefix itself if there is one.
	Objects []ObjectInfo
	// Prefixes are the common prefixes ("dir/sub/"), each ending in "/".
	Prefixes []string
}

// Cond is the condition of a write. The zero value is unconditional.
type Cond struct {
	// IfMatch, when set, makes the write succeed only while the current
	// object's ETag equals it (else ErrPrecondition; ErrPrecondition too if
	// the object does not exist).
	IfMatch string
	// IfNoneMatch makes the write succeed only if no object exists under the
	// key (else ErrPrecondition).
	IfNoneMatch bool
}

// Backend is an object store. Every method is safe for concurrent use and
// honours ctx cancellation (returning an error wrapping ctx.Err()).
type Backend interface {
	// List calls fn for each page of the objects and common prefixes directly
	// under prefix (delimiter "/"). prefix is "" or ends in "/". Pages hold
	// at most 1000 entries; each page costs one request. A prefix with
	// nothing under it yields no error and no entries (or one empty page).
	// An error returned by fn stops the listing and is returned.
	List(ctx context.Context, prefix string, fn func(Page) error) error

	// ListFlat is like List without a delimiter: every key under prefix,
	// at any depth, in lexical order. Page.Prefixes is always empty.
	ListFlat(ctx context.Context, prefix string, fn func(Page) error) error

	// Stat returns the object's metadata (a HEAD). ErrNotFound if absent.
	Stat(ctx context.Context, key string) (ObjectInfo, error)

	// Get returns the bytes [off, off+n) of the object. n < 0 means to the
	// end. If ifMatch is set and the object's ETag differs, it fails with
	// ErrPrecondition. A range past the end returns the bytes that exist
	// (possibly none). The caller closes the reader.
	Get(ctx context.Context, key string, off, n int64, ifMatch string) (io.ReadCloser, error)

	// Put stores size bytes read from body (from its current position)
	// under key, atomically: readers see the old or the new object, never a
	// mix. body is seekable so that a request can be signed and retried.
	// meta is stored as user metadata. It returns the new object's info (at
	// least Key, Size, ETag).
	Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string, cond Cond) (ObjectInfo, error)

	// Copy copies src (which must have ETag srcETag, if srcETag is set;
	// else ErrPrecondition) to dst under cond. ErrNotFound if src is absent.
	Copy(ctx context.Context, src, srcETag, dst string, cond Cond) (ObjectInfo, error)

	// Delete removes key. Deleting an absent key is not an error. If ifMatch
	// is set, the delete happens only while the ETag matches (else
	// ErrPrecondition); stores that cannot check it atomically check it
	// with a Stat first.
	Delete(ctx context.Context, key string, ifMatch string) error

	// String names the store for messages: "s3://bucket/prefix at URL",
	// "dir:/path". It never contains credentials.
	String() string
}

// Presigner is implemented by stores that can hand out time-limited download
// URLs (nimbus share).
type Presigner interface {
	PresignGet(ctx context.Context, key string, expires time.Duration) (string, error)
}

// Retryable reports whether err may pass if the operation is tried again
// later: the store was unreachable or a concurrent operation was in progress.
func Retryable(err error) bool {
	return errors.Is(err, ErrOffline) || errors.Is(err, ErrConflict)
}
