package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/nimbus-fs/nimbus/backend"
)

// pageSize is the most keys S3 returns per ListObjectsV2 page.
const pageSize = 1000

// List implements backend.Backend: one ListObjectsV2 request (delimiter "/",
// up to 1000 entries) per page. An empty prefix yields one empty page.
// A missing bucket gives ErrNoBucket.
func (s *Store) List(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	return s.list(ctx, "list", prefix, "/", fn)
}

// ListFlat implements backend.Backend: like List without a delimiter.
func (s *Store) ListFlat(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	return s.list(ctx, "list-flat", prefix, "", fn)
}

func (s *Store) list(ctx context.Context, op, prefix, delimiter string, fn func(backend.Page) error) error {
	in := &awss3.ListObjectsV2Input{
		Bucket:  aws.String(s.bucket),
		MaxKeys: aws.Int32(pageSize),
		// Keys may hold characters XML 1.0 cannot carry (control
		// characters): ask for URL-encoded keys and decode them.
		EncodingType: types.EncodingTypeUrl,
	}
	if prefix != "" {
		in.Prefix = aws.String(prefix)
	}
	if delimiter != "" {
		in.Delimiter = aws.String(delimiter)
	}
	pages := awss3.NewListObjectsV2Paginator(s.client, in)
	for pages.HasMorePages() {
		out, err := pages.NextPage(ctx)
		if err != nil {
			return s.opError(ctx, op, prefix, err)
		}
		page := backend.Page{Objects: make([]backend.ObjectInfo, 0, len(out.Contents))}
		for _, o := range out.Contents {
			key, err := listedKey(o.Key, out.EncodingType)
			if err != nil {
				return fmt.Errorf("%s %q in %s: %w", op, prefix, s, err)
			}
			page.Objects = append(page.Objects, backend.ObjectInfo{
				Key:     key,
				Size:    aws.ToInt64(o.Size),
				ETag:    unquoteETag(o.ETag),
				ModTime: aws.ToTime(o.LastModified),
			})
		}
		for _, p := range out.CommonPrefixes {
			pfx, err := listedKey(p.Prefix, out.EncodingType)
			if err != nil {
				return fmt.Errorf("%s %q in %s: %w", op, prefix, s, err)
			}
			page.Prefixes = append(page.Prefixes, pfx)
		}
		if err := fn(page); err != nil {
			return err
		}
	}
	return nil
}

// listedKey decodes a key of a listing made with encoding-type=url. A store
// that ignored the request answers without EncodingType, and its keys are
// taken as they are.
func listedKey(k *string, enc types.EncodingType) (string, error) {
	if enc != types.EncodingTypeUrl {
		return aws.ToString(k), nil
	}
	key, err := url.QueryUnescape(aws.ToString(k))
	if err != nil {
		return "", fmt.Errorf("undecodable key %q in listing: %w", aws.ToString(k), err)
	}
	return key, nil
}

// Stat implements backend.Backend with one HeadObject. Meta holds the user
// metadata, names in lower case.
func (s *Store) Stat(ctx context.Context, key string) (backend.ObjectInfo, error) {
	if err := checkKey("stat", key); err != nil {
		return backend.ObjectInfo{}, err
	}
	info, err := s.head(ctx, key, "")
	if err != nil {
		return backend.ObjectInfo{}, s.opError(ctx, "stat", key, err)
	}
	return info, nil
}

// head is a HeadObject, with If-Match when ifMatch is set, and opts added
// to the client's options. Errors are the SDK's, unwrapped.
func (s *Store) head(ctx context.Context, key, ifMatch string, opts ...func(*awss3.Options)) (backend.ObjectInfo, error) {
	out, err := s.headObject(ctx, key, ifMatch, opts...)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	return headInfo(key, out), nil
}

// headObject is head with the whole answer.
func (s *Store) headObject(ctx context.Context, key, ifMatch string, opts ...func(*awss3.Options)) (*awss3.HeadObjectOutput, error) {
	in := &awss3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)}
	if ifMatch != "" {
		in.IfMatch = quoteETag(ifMatch)
	}
	return s.client.HeadObject(ctx, in, opts...)
}

// headInfo is the ObjectInfo of key's HEAD answer.
func headInfo(key string, out *awss3.HeadObjectOutput) backend.ObjectInfo {
	return backend.ObjectInfo{
		Key:     key,
		Size:    aws.ToInt64(out.ContentLength),
		ETag:    unquoteETag(out.ETag),
		ModTime: aws.ToTime(out.LastModified),
		Meta:    lowerKeys(out.Metadata),
	}
}

// Get implements backend.Backend with one ranged GetObject (If-Match when
// ifMatch is set). A range that starts at or after the end answers 416,
// which Get turns into an empty reader; with ifMatch set it then checks the
// ETag with a HeadObject, because stores may check the range first. n == 0
// costs a HeadObject instead. Errors while reading the body wrap
// ErrOffline when the connection broke.
func (s *Store) Get(ctx context.Context, key string, off, n int64, ifMatch string) (io.ReadCloser, error) {
	if err := checkKey("get", key); err != nil {
		return nil, err
	}
	if off < 0 {
		return nil, fmt.Errorf("get %q in %s: negative offset %d", key, s, off)
	}
	if n == 0 {
		if _, err := s.head(ctx, key, ifMatch); err != nil {
			return nil, s.opError(ctx, "get", key, err)
		}
		return emptyBody(), nil
	}
	in := &awss3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)}
	if ifMatch != "" {
		in.IfMatch = quoteETag(ifMatch)
	}
	// A whole-object read sends no Range: "bytes=0-" on an empty object
	// would be unsatisfiable.
	switch {
	case n > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	case off > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", off))
	}
	out, err := s.client.GetObject(ctx, in)
	if err != nil {
		if !isInvalidRange(err) {
			return nil, s.opError(ctx, "get", key, err)
		}
		if ifMatch != "" {
			if _, err := s.head(ctx, key, ifMatch); err != nil {
				return nil, s.opError(ctx, "get", key, err)
			}
		}
		return emptyBody(), nil
	}
	body := io.Reader(out.Body)
	if off > 0 && out.ContentRange == nil {
		// The store ignored Range and sent the whole object; skip to
		// off ourselves rather than hand back the wrong bytes.
		if _, err := io.CopyN(io.Discard, out.Body, off); err != nil && !errors.Is(err, io.EOF) {
			closeQuietly(out.Body)
			return nil, s.opError(ctx, "get", key, err)
		}
	}
	if n > 0 {
		body = io.LimitReader(body, n)
	}
	return &getBody{s: s, ctx: ctx, key: key, r: body, c: out.Body}, nil
}

func isInvalidRange(err error) bool {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode() == "InvalidRange" {
		return true
	}
	return httpStatus(err) == http.StatusRequestedRangeNotSatisfiable
}

// getBody maps read errors to domain errors: a connection that breaks
// mid-body is ErrOffline, not a bare "unexpected EOF".
type getBody struct {
	s   *Store
	ctx context.Context
	key string
	r   io.Reader
	c   io.Closer
}

func (b *getBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = b.s.opError(b.ctx, "read", b.key, err)
	}
	return n, err
}

func (b *getBody) Close() error { return b.c.Close() }

func emptyBody() io.ReadCloser { return io.NopCloser(bytes.NewReader(nil)) }

// closeQuietly closes a response body on an error path, where the read
// error is the one worth reporting.
func closeQuietly(c io.Closer) {
	_ = c.Close() // the caller already has a more useful error
}

// Put implements backend.Backend with one PutObject carrying If-Match or
// If-None-Match: * from cond; the store checks them atomically. A 404 to an
// If-Match put (the object is absent) is ErrPrecondition. Put reads exactly
// size bytes from body; a shorter body is an error (not ErrOffline).
// The returned info has Key, Size and ETag; ModTime is left zero (S3 does
// not return it). Objects larger than Config.MultipartThreshold go up as a
// multipart upload instead, with the same semantics (see putMultipart).
func (s *Store) Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string, cond backend.Cond) (backend.ObjectInfo, error) {
	if err := checkKey("put", key); err != nil {
		return backend.ObjectInfo{}, err
	}
	if size < 0 {
		return backend.ObjectInfo{}, fmt.Errorf("put %q in %s: negative size %d", key, s, size)
	}
	if cond.IfMatch != "" && cond.IfNoneMatch {
		return backend.ObjectInfo{}, fmt.Errorf("put %q in %s: both If-Match and If-None-Match: %w", key, s, backend.ErrPrecondition)
	}
	if size > s.multipartThreshold {
		return s.putMultipart(ctx, key, body, size, meta, cond)
	}
	sized, err := newSizedBody(body, size)
	if err != nil {
		return backend.ObjectInfo{}, fmt.Errorf("put %q in %s: %w", key, s, err)
	}
	in := &awss3.PutObjectInput{
		Bucket:        aws.String(s.bucket),
		Key:           aws.String(key),
		Body:          sized,
		ContentLength: aws.Int64(size),
		Metadata:      meta,
	}
	if cond.IfMatch != "" {
		in.IfMatch = quoteETag(cond.IfMatch)
	}
	if cond.IfNoneMatch {
		in.IfNoneMatch = aws.String("*")
	}
	out, err := s.client.PutObject(ctx, in)
	if err != nil {
		return backend.ObjectInfo{}, s.putError(ctx, key, cond, err)
	}
	return backend.ObjectInfo{Key: key, Size: size, ETag: unquoteETag(out.ETag)}, nil
}

// sizedBody presents exactly size bytes of r, starting at r's position when
// it was made, as a seekable stream (the SDK seeks to sign and to retry).
type sizedBody struct {
	r    io.ReadSeeker
	base int64 // r's offset of byte 0
	size int64
	pos  int64 // relative to base
}

func newSizedBody(r io.ReadSeeker, size int64) (*sizedBody, error) {
	base, err := r.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, fmt.Errorf("body: %w", err)
	}
	return &sizedBody{r: r, base: base, size: size}, nil
}

func (b *sizedBody) Read(p []byte) (int, error) {
	if b.pos >= b.size {
		return 0, io.EOF
	}
	if rem := b.size - b.pos; int64(len(p)) > rem {
		p = p[:rem]
	}
	n, err := b.r.Read(p)
	b.pos += int64(n)
	if err == io.EOF && b.pos < b.size {
		err = fmt.Errorf("%w: ended after %d of %d bytes", errShortBody, b.pos, b.size)
	}
	return n, err
}

func (b *sizedBody) Seek(offset int64, whence int) (int64, error) {
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = b.pos + offset
	case io.SeekEnd:
		abs = b.size + offset
	default:
		return b.pos, fmt.Errorf("seek: invalid whence %d", whence)
	}
	if abs < 0 {
		return b.pos, fmt.Errorf("seek: negative position %d", abs)
	}
	if _, err := b.r.Seek(b.base+abs, io.SeekStart); err != nil {
		return b.pos, err
	}
	b.pos = abs
	return abs, nil
}

// Copy implements backend.Backend. It costs a HeadObject of src (for its
// size and a clear ErrNotFound/ErrPrecondition), a HeadObject of dst when
// cond is set (see the package doc: stores such as MinIO ignore conditions
// on the copy's destination), and one CopyObject that carries
// x-amz-copy-source-if-match with src's ETag (so the bytes copied are the
// ones that were checked) plus dst's If-Match / If-None-Match. The new
// object keeps src's metadata. A source over Config.CopyThreshold is
// copied in parts instead (copy.go), on the same terms; a multipart upload
// aborted elsewhere meanwhile is ErrConflict.
func (s *Store) Copy(ctx context.Context, src, srcETag, dst string, cond backend.Cond) (backend.ObjectInfo, error) {
	if err := checkKey("copy", src); err != nil {
		return backend.ObjectInfo{}, err
	}
	if err := checkKey("copy", dst); err != nil {
		return backend.ObjectInfo{}, err
	}
	if cond.IfMatch != "" && cond.IfNoneMatch {
		return backend.ObjectInfo{}, fmt.Errorf("copy %q to %q in %s: both If-Match and If-None-Match: %w", src, dst, s, backend.ErrPrecondition)
	}
	op := "copy to " + dst + " from"
	// Without srcETag, src may legitimately change between our HEAD and
	// the copy; then the copy's source check fails and we try again.
	for attempt := 1; ; attempt++ {
		head, err := s.headObject(ctx, src, srcETag)
		if err != nil {
			return backend.ObjectInfo{}, s.opError(ctx, op, src, err)
		}
		info := headInfo(src, head)
		if err := s.checkCond(ctx, dst, cond); err != nil {
			return backend.ObjectInfo{}, err
		}
		var res backend.ObjectInfo
		if info.Size > s.copyThreshold {
			res, err = s.copyParts(ctx, copySource(s.bucket, src), head, dst, cond)
		} else {
			in := s.copyInput(dst, copySource(s.bucket, src), cond)
			in.CopySourceIfMatch = quoteETag(info.ETag)
			var out *awss3.CopyObjectOutput
			if out, err = s.client.CopyObject(ctx, in); err == nil {
				res = copied(backend.ObjectInfo{Key: dst, Size: info.Size, ETag: info.ETag}, out)
			}
		}
		if err != nil {
			kind := classify(err)
			if kind == backend.ErrPrecondition && srcETag == "" && cond == (backend.Cond{}) && attempt < maxAttempts {
				continue
			}
			return backend.ObjectInfo{}, s.copyError(ctx, op, src, cond, err)
		}
		return res, nil
	}
}

// copyError maps the error of a CopyObject or of a multipart copy. Stores
// that check If-Match on the destination answer 404 when it is absent: a
// failed precondition. A multipart upload that vanished (NoSuchUpload) is
// a concurrent operation, worth retrying.
func (s *Store) copyError(ctx context.Context, op, key string, cond backend.Cond, err error) error {
	switch {
	case isNoSuchUpload(err):
		return s.opErrorAs(ctx, op, key, backend.ErrConflict, err)
	case classify(err) == backend.ErrNotFound && cond.IfMatch != "":
		return s.opErrorAs(ctx, op, key, backend.ErrPrecondition, err)
	}
	return s.opError(ctx, op, key, err)
}

// copyInput is the CopyObject of source (copySource's form) to dst with the
// metadata of the source, conditioned on dst by cond.
func (s *Store) copyInput(dst, source string, cond backend.Cond) *awss3.CopyObjectInput {
	in := &awss3.CopyObjectInput{
		Bucket:            aws.String(s.bucket),
		Key:               aws.String(dst),
		CopySource:        aws.String(source),
		MetadataDirective: types.MetadataDirectiveCopy,
	}
	if cond.IfMatch != "" {
		in.IfMatch = quoteETag(cond.IfMatch)
	}
	if cond.IfNoneMatch {
		in.IfNoneMatch = aws.String("*")
	}
	return in
}

// copied is res, the copy's destination, with the ETag and time the copy
// answered.
func copied(res backend.ObjectInfo, out *awss3.CopyObjectOutput) backend.ObjectInfo {
	if r := out.CopyObjectResult; r != nil {
		res.ETag = unquoteETag(r.ETag)
		res.ModTime = aws.ToTime(r.LastModified)
	}
	return res
}

// checkCond checks cond against key's current state with a HeadObject.
// The zero cond costs nothing.
func (s *Store) checkCond(ctx context.Context, key string, cond backend.Cond) error {
	if cond == (backend.Cond{}) {
		return nil
	}
	_, err := s.head(ctx, key, cond.IfMatch)
	switch kind := classify(err); {
	case err == nil && cond.IfNoneMatch:
		return fmt.Errorf("copy to %q in %s: the object exists: %w", key, s, backend.ErrPrecondition)
	case err == nil:
		return nil
	case kind == backend.ErrNotFound && cond.IfNoneMatch:
		return nil
	case kind == backend.ErrNotFound:
		return s.opErrorAs(ctx, "copy to", key, backend.ErrPrecondition, err)
	default:
		return s.opError(ctx, "copy to", key, err)
	}
}

// copySource is the URL-encoded "bucket/key" of x-amz-copy-source.
func copySource(bucket, key string) string {
	segs := strings.Split(key, "/")
	for i, seg := range segs {
		segs[i] = url.PathEscape(seg)
	}
	return bucket + "/" + strings.Join(segs, "/")
}

// Delete implements backend.Backend with one DeleteObject. With ifMatch set
// it first checks the ETag with a HeadObject (MinIO ignores If-Match on
// DeleteObject; see the package doc for the race window) and also sends
// If-Match. Deleting an absent key, with or without ifMatch, succeeds.
func (s *Store) Delete(ctx context.Context, key string, ifMatch string) error {
	if err := checkKey("delete", key); err != nil {
		return err
	}
	in := &awss3.DeleteObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)}
	if ifMatch != "" {
		if _, err := s.head(ctx, key, ifMatch); err != nil {
			if classify(err) == backend.ErrNotFound {
				return nil
			}
			return s.opError(ctx, "delete", key, err)
		}
		in.IfMatch = quoteETag(ifMatch)
	}
	if _, err := s.client.DeleteObject(ctx, in); err != nil {
		if classify(err) == backend.ErrNotFound {
			// A conditional delete of a key deleted meanwhile.
			return nil
		}
		return s.opError(ctx, "delete", key, err)
	}
	return nil
}

// lowerKeys returns m with lower-case keys, or nil when m is empty.
func lowerKeys(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[strings.ToLower(k)] = v
	}
	return out
}
