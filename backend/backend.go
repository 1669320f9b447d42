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
	"fmt"
	"io"
	"sort"
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
	// Attrs are the POSIX attributes nimbus keeps for this version of the
	// object beside its metadata, as a listing decorated by
	// backend/attrindex reports them; nil: none known from the listing.
	Attrs *Attrs
}

// Attrs are the POSIX attributes of a file or folder that a listing can
// carry (package attrindex), so that no HEAD per entry is needed to show
// them. A zero field is unknown.
type Attrs struct {
	// Mode is st_mode, type bits included.
	Mode                uint32
	MTime, ATime, CTime time.Time
	// Owner: UID and GID are set; else the mounting user's.
	Owner    bool
	UID, GID uint32
	Rdev     uint32
	// Target is a symlink's target, when it is short enough to be kept.
	Target string
}

// Page is one page of a delimited listing.
type Page struct {
	// Objects directly under the prefix, including the marker key equal to
	// the prefix itself if there is one.
	Objects []ObjectInfo
	// Prefixes are the common prefixes ("dir/sub/"), each ending in "/".
	Prefixes []string
	// PrefixAttrs are the attributes of some of Prefixes (the folders'),
	// by prefix, as a listing decorated by backend/attrindex reports them.
	PrefixAttrs map[string]Attrs
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
	// PresignGet returns a URL that downloads key's current version for
	// expires (at most MaxPresignExpiry; longer fails with an error
	// wrapping ErrPresignExpiry). The URL is a bearer credential: it must
	// never be logged.
	PresignGet(ctx context.Context, key string, expires time.Duration) (string, error)
}

// MaxPresignExpiry is the longest a presigned URL may live: SigV4's limit.
const MaxPresignExpiry = 7 * 24 * time.Hour

// ErrPresignExpiry: a presigned URL was asked for a lifetime SigV4 cannot
// sign (none, or more than MaxPresignExpiry).
var ErrPresignExpiry = errors.New("a share link lives at most 7 days (the limit of S3's SigV4 signatures)")

// ErrNoVersioning: the bucket does not keep versions (versioning was never
// enabled, or is suspended).
var ErrNoVersioning = errors.New("versioning is not enabled on the bucket")

// Version is one version of an object, or a delete marker, as a versioned
// store lists it.
type Version struct {
	Key string
	// ID is the store's version ID ("null" for a version written while
	// versioning was off).
	ID      string
	Size    int64
	ETag    string
	ModTime time.Time
	// Current: this is the key's latest version (IsLatest). A current
	// delete marker means the key is deleted.
	Current bool
	// Deleted: a delete marker, holding no content; ModTime is the time of
	// the delete.
	Deleted bool
}

// VersionLister is implemented by stores that keep earlier versions of
// objects (S3 bucket versioning).
type VersionLister interface {
	// Versioning reports whether the store keeps versions now; false
	// (not an error) when versioning was never enabled or is suspended.
	Versioning(ctx context.Context) (bool, error)
	// ListVersions calls fn with pages of the versions and delete markers
	// of every key under prefix (at any depth; "" is all), in key order
	// and, for each key, newest first. Each page costs one request. An
	// error returned by fn stops the listing and is returned.
	ListVersions(ctx context.Context, prefix string, fn func([]Version) error) error
}

// VersionReader is implemented by versioned stores that read a version by
// its ID.
type VersionReader interface {
	// StatVersion is Stat of version id of key. ErrNotFound if there is no
	// such version (a delete marker included).
	StatVersion(ctx context.Context, key, id string) (ObjectInfo, error)
	// GetVersion is Get of version id of key (no If-Match: a version
	// never changes).
	GetVersion(ctx context.Context, key, id string, off, n int64) (io.ReadCloser, error)
}

// VersionCopier is implemented by versioned stores that copy one version of
// an object server-side.
type VersionCopier interface {
	// CopyVersion copies version id of src to dst under cond, as Copy
	// does: the new object is a new current version of dst with the old
	// version's bytes and metadata. ErrNotFound if the version does not
	// exist; ErrPrecondition if cond fails.
	CopyVersion(ctx context.Context, src, id, dst string, cond Cond) (ObjectInfo, error)
}

// Retryable reports whether err may pass if the operation is tried again
// later: the store was unreachable or a concurrent operation was in progress.
func Retryable(err error) bool {
	return errors.Is(err, ErrOffline) || errors.Is(err, ErrConflict)
}

// Range is the byte range [Off, Off+Len) of an object.
type Range struct {
	Off, Len int64
}

// End is the offset just past the range.
func (r Range) End() int64 { return r.Off + r.Len }

// EachWithin calls fn with the part within [off, end) of each of ranges
// (sorted and disjoint, as CheckRanges wants them) that has one, in order,
// and returns fn's first error.
func EachWithin(ranges []Range, off, end int64, fn func(Range) error) error {
	i := sort.Search(len(ranges), func(i int) bool { return ranges[i].End() > off })
	for ; i < len(ranges) && ranges[i].Off < end; i++ {
		lo, hi := max(ranges[i].Off, off), min(ranges[i].End(), end)
		if err := fn(Range{Off: lo, Len: hi - lo}); err != nil {
			return err
		}
	}
	return nil
}

// CheckRanges returns an error unless ranges are sorted, disjoint (they may
// touch), each at least one byte long, and within [0, size).
func CheckRanges(ranges []Range, size int64) error {
	var end int64
	for i, r := range ranges {
		switch {
		case r.Off < 0 || r.Len <= 0:
			return fmt.Errorf("range %d [%d, +%d) is empty or negative", i, r.Off, r.Len)
		case r.Off < end:
			return fmt.Errorf("range %d [%d, +%d) starts before the end of the one before (%d): ranges must be sorted and disjoint", i, r.Off, r.Len, end)
		case r.Len > size-r.Off:
			return fmt.Errorf("range %d [%d, +%d) ends past the object's %d bytes", i, r.Off, r.Len, size)
		}
		end = r.End()
	}
	return nil
}

// DeltaResult reports what a PutDelta did.
type DeltaResult struct {
	// Info is the new object (at least Key, Size and ETag); zero when
	// PutDelta fails.
	Info ObjectInfo
	// Sent is how many bytes of the body were sent to the store, and
	// Copied how many the store copied from the base version without them
	// crossing the network, in CopyParts requests. They count requests
	// made, so a PutDelta that fails reports what it did before failing.
	Sent, Copied int64
	CopyParts    int
}

// DeltaPutter is implemented by stores that can build a new version of an
// object partly from ranges of its current version, server-side (S3
// UploadPartCopy), so that a small edit of a large file does not send the
// whole file again. It is optional: a store that is not a DeltaPutter is
// sent everything with Put (see PutDelta).
type DeltaPutter interface {
	// PutDelta stores size bytes under key, atomically, as Put does: the
	// bytes of body (read with ReadAt; offset 0 is the object's first
	// byte), except that the ranges in same (see CheckRanges) may instead
	// be copied from the version of key whose ETag is base, at the same
	// offsets. The caller promises that body holds exactly those bytes
	// there. The store decides what it copies and what it sends, and may
	// send everything.
	//
	// The write is conditional on base, as Put with Cond{IfMatch: base}:
	// it succeeds only if key still has ETag base when the new object
	// becomes visible, and fails with ErrPrecondition otherwise, an absent
	// key included. So the bytes copied are always those of base. A
	// multipart upload vanished under it (aborted elsewhere) is
	// ErrConflict; meta, the returned info and the other errors are Put's.
	// An empty base or malformed ranges fail with a plain error before
	// any request.
	PutDelta(ctx context.Context, key string, body io.ReaderAt, size int64, meta map[string]string, base string, same []Range) (DeltaResult, error)
}

// PutDelta is b's PutDelta when b is a DeltaPutter; otherwise it sends the
// whole body with a Put conditioned on If-Match base. Decorators forward the
// optional interface with it.
func PutDelta(ctx context.Context, b Backend, key string, body io.ReaderAt, size int64, meta map[string]string, base string, same []Range) (DeltaResult, error) {
	if d, ok := b.(DeltaPutter); ok {
		return d.PutDelta(ctx, key, body, size, meta, base, same)
	}
	if base == "" {
		return DeltaResult{}, fmt.Errorf("put %q: a delta needs the ETag of its base version", key)
	}
	if err := CheckRanges(same, size); err != nil {
		return DeltaResult{}, fmt.Errorf("put %q: %w", key, err)
	}
	info, err := b.Put(ctx, key, io.NewSectionReader(body, 0, size), size, meta, Cond{IfMatch: base})
	// A failed Put has sent its body too, or most of it.
	return DeltaResult{Info: info, Sent: size}, err
}

// SortVersions orders versions as VersionLister.ListVersions returns them:
// by key, then newest first (by ModTime; the current one first on a tie).
func SortVersions(vs []Version) {
	sort.SliceStable(vs, func(i, j int) bool {
		a, b := vs[i], vs[j]
		switch {
		case a.Key != b.Key:
			return a.Key < b.Key
		case !a.ModTime.Equal(b.ModTime):
			return a.ModTime.After(b.ModTime)
		}
		return a.Current && !b.Current
	})
}

// ErrNoUpload: the multipart upload named does not exist (any more): it was
// completed or aborted, here or elsewhere, or removed by a lifecycle rule.
var ErrNoUpload = errors.New("multipart upload not found")

// Part is one part of a multipart upload, as PartUploader.UploadPart
// reports it and CompleteUpload takes it back.
type Part struct {
	// Num is the part number, from 1.
	Num  int    `json:"n"`
	ETag string `json:"etag"`
	Size int64  `json:"size"`
	// CRC32 is the part's checksum (base64) when the store asked for one;
	// CompleteUpload must send it back.
	CRC32 string `json:"crc32,omitempty"`
}

// PartUploader is implemented by stores that build an object from parts
// uploaded one at a time, before the whole object is known (S3 multipart
// uploads): a file being written sequentially is sent while it is written.
// It is optional. Decorators implement it over any store and report
// PartSize 0 when the store they wrap is not a PartUploader; callers check
// PartSize before anything else.
type PartUploader interface {
	// PartSize is the size of every part but the last; 0 means that the
	// store takes no parts.
	PartSize() int64
	// CreateUpload starts a multipart upload of key, whose object will
	// carry meta, and returns its ID. Nothing is visible under key until
	// CompleteUpload.
	CreateUpload(ctx context.Context, key string, meta map[string]string) (uploadID string, err error)
	// UploadPart sends the size bytes of body at off as part num (from 1)
	// of the upload. Sending a number again replaces that part. Every part
	// but the last must be PartSize bytes. ErrNoUpload if the upload is
	// gone.
	UploadPart(ctx context.Context, key, uploadID string, num int, body io.ReaderAt, off, size int64) (Part, error)
	// CompleteUpload makes the object of parts (in order, numbered 1 to
	// len(parts)) visible under key, atomically and under cond, as Put
	// does: ErrPrecondition when cond fails (an absent key included, for
	// IfMatch), and then the upload stays open for AbortUpload.
	// ErrNoUpload if the upload is gone. The info holds at least Key,
	// Size and ETag.
	CompleteUpload(ctx context.Context, key, uploadID string, parts []Part, cond Cond) (ObjectInfo, error)
	// AbortUpload discards the upload and its parts. An upload already
	// gone is not an error.
	AbortUpload(ctx context.Context, key, uploadID string) error
	// ListUploads returns the uploads of exactly key that are neither
	// completed nor aborted (whoever started them).
	ListUploads(ctx context.Context, key string) ([]Upload, error)
}

// Upload is a multipart upload in progress.
type Upload struct {
	ID        string
	Initiated time.Time
}

// Parts returns b as a PartUploader when it takes parts (PartSize > 0).
func Parts(b any) (PartUploader, bool) {
	p, ok := b.(PartUploader)
	if !ok || p.PartSize() <= 0 {
		return nil, false
	}
	return p, true
}

// PartSize is b's part size, or 0 when it takes no parts: what a
// decorator's PartSize forwards.
func PartSize(b any) int64 {
	if p, ok := Parts(b); ok {
		return p.PartSize()
	}
	return 0
}

// PartsFor is Parts for a decorator forwarding a multipart call on key to
// b: its error says that b takes no parts.
func PartsFor(b any, key string) (PartUploader, error) {
	p, ok := Parts(b)
	if !ok {
		return nil, fmt.Errorf("multipart upload of %q: %s takes no parts", key, b)
	}
	return p, nil
}
