package s3

// Versions (backend.VersionLister, VersionReader, VersionCopier): the store's
// side of nimbus versions, restore, deleted and the point-in-time view, on
// S3 bucket versioning. Every write keeps working as before on a versioned
// bucket: a Put makes a new current version, a Delete a delete marker.

import (
	"context"
	"fmt"
	"io"
	"net/url"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/nimbus-fs/nimbus/backend"
)

var (
	_ backend.VersionLister = (*Store)(nil)
	_ backend.VersionReader = (*Store)(nil)
	_ backend.VersionCopier = (*Store)(nil)
)

// Versioning implements backend.VersionLister with one GetBucketVersioning.
func (s *Store) Versioning(ctx context.Context) (bool, error) {
	out, err := s.client.GetBucketVersioning(ctx, &awss3.GetBucketVersioningInput{Bucket: aws.String(s.bucket)})
	if err != nil {
		return false, s.opError(ctx, "get versioning of", s.bucket, err)
	}
	return out.Status == types.BucketVersioningStatusEnabled, nil
}

// ListVersions implements backend.VersionLister: ListObjectVersions, up to
// 1000 versions and delete markers a page, merged in key order and newest
// first for each key (S3 returns them so, but in two lists).
func (s *Store) ListVersions(ctx context.Context, prefix string, fn func([]backend.Version) error) error {
	in := &awss3.ListObjectVersionsInput{
		Bucket:       aws.String(s.bucket),
		MaxKeys:      aws.Int32(pageSize),
		EncodingType: types.EncodingTypeUrl,
	}
	if prefix != "" {
		in.Prefix = aws.String(prefix)
	}
	pages := awss3.NewListObjectVersionsPaginator(s.client, in)
	for pages.HasMorePages() {
		out, err := pages.NextPage(ctx)
		if err != nil {
			return s.opError(ctx, "list versions", prefix, err)
		}
		page := make([]backend.Version, 0, len(out.Versions)+len(out.DeleteMarkers))
		for _, v := range out.Versions {
			key, err := listedKey(v.Key, out.EncodingType)
			if err != nil {
				return fmt.Errorf("list versions %q in %s: %w", prefix, s, err)
			}
			page = append(page, backend.Version{
				Key: key, ID: aws.ToString(v.VersionId), Size: aws.ToInt64(v.Size), ETag: unquoteETag(v.ETag),
				ModTime: aws.ToTime(v.LastModified), Current: aws.ToBool(v.IsLatest),
			})
		}
		for _, m := range out.DeleteMarkers {
			key, err := listedKey(m.Key, out.EncodingType)
			if err != nil {
				return fmt.Errorf("list versions %q in %s: %w", prefix, s, err)
			}
			page = append(page, backend.Version{
				Key: key, ID: aws.ToString(m.VersionId), ModTime: aws.ToTime(m.LastModified),
				Current: aws.ToBool(m.IsLatest), Deleted: true,
			})
		}
		backend.SortVersions(page)
		if err := fn(page); err != nil {
			return err
		}
	}
	return nil
}

// StatVersion implements backend.VersionReader with one HeadObject of the
// version.
func (s *Store) StatVersion(ctx context.Context, key, id string) (backend.ObjectInfo, error) {
	out, err := s.headVersion(ctx, key, id)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	return headInfo(key, out), nil
}

// headVersion is StatVersion with the whole answer.
func (s *Store) headVersion(ctx context.Context, key, id string) (*awss3.HeadObjectOutput, error) {
	if err := checkKey("stat", key); err != nil {
		return nil, err
	}
	out, err := s.client.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key), VersionId: aws.String(id)})
	if err != nil {
		if httpStatus(err) == 400 {
			// A HEAD answer has no body to say why: an unknown version
			// and an SSE-C object read without its key look alike. A
			// one-byte GET says which.
			if r, gerr := s.client.GetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key), VersionId: aws.String(id), Range: aws.String("bytes=0-0")}); gerr != nil {
				err = gerr
			} else {
				closeQuietly(r.Body)
			}
		}
		return nil, s.versionError(ctx, "stat", key, id, err)
	}
	return out, nil
}

// GetVersion implements backend.VersionReader with one ranged GetObject of
// the version. A range past the end gives an empty reader.
func (s *Store) GetVersion(ctx context.Context, key, id string, off, n int64) (io.ReadCloser, error) {
	if err := checkKey("get", key); err != nil {
		return nil, err
	}
	if off < 0 {
		return nil, fmt.Errorf("get %q in %s: negative offset %d", key, s, off)
	}
	if n == 0 {
		if _, err := s.StatVersion(ctx, key, id); err != nil {
			return nil, err
		}
		return emptyBody(), nil
	}
	in := &awss3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key), VersionId: aws.String(id)}
	switch {
	case n > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	case off > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", off))
	}
	out, err := s.client.GetObject(ctx, in)
	if err != nil {
		if isInvalidRange(err) {
			return emptyBody(), nil
		}
		return nil, s.versionError(ctx, "get", key, id, err)
	}
	var body io.Reader = out.Body
	if n > 0 {
		body = io.LimitReader(body, n)
	}
	return &getBody{s: s, ctx: ctx, key: key, r: body, c: out.Body}, nil
}

// CopyVersion implements backend.VersionCopier: a HeadObject of the
// version, the destination's condition checked with a HeadObject as in
// Copy, and one CopyObject from the version that also carries the
// condition; a version over Config.CopyThreshold is copied in parts
// instead (copy.go), each from the version and its ETag.
func (s *Store) CopyVersion(ctx context.Context, src, id, dst string, cond backend.Cond) (backend.ObjectInfo, error) {
	if err := checkKey("copy", dst); err != nil {
		return backend.ObjectInfo{}, err
	}
	head, err := s.headVersion(ctx, src, id)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	info := headInfo(src, head)
	if err := s.checkCond(ctx, dst, cond); err != nil {
		return backend.ObjectInfo{}, err
	}
	source := copySource(s.bucket, src) + "?versionId=" + url.QueryEscape(id)
	op := "copy version " + id + " of " + src + " to"
	if info.Size > s.copyThreshold {
		res, err := s.copyParts(ctx, source, head, dst, cond)
		if err != nil {
			return backend.ObjectInfo{}, s.copyError(ctx, op, dst, cond, err)
		}
		return res, nil
	}
	out, err := s.client.CopyObject(ctx, s.copyInput(dst, source, cond))
	if err != nil {
		return backend.ObjectInfo{}, s.opError(ctx, op, dst, err)
	}
	return copied(backend.ObjectInfo{Key: dst, Size: info.Size, ETag: info.ETag, Meta: info.Meta}, out), nil
}

// versionError is opError for a request naming a version: a version ID
// the store does not know (400 InvalidArgument on S3, or a 405 for a
// delete marker) is ErrNotFound.
func (s *Store) versionError(ctx context.Context, op, key, id string, err error) error {
	switch status := httpStatus(err); {
	case status == 405, status == 400 && !isSSECRefusal(err, s.customerKey):
		return s.opErrorAs(ctx, op+" version "+id+" of", key, backend.ErrNotFound, err)
	}
	return s.opError(ctx, op+" version "+id+" of", key, err)
}
