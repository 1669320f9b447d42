package s3

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nimbus-fs/nimbus/backend"
)

// ErrPresignSSEC: a store that reads with a customer key (SSE-C) cannot make
// a download link: the recipient would need the key, and the link would
// carry it in its query string.
var ErrPresignSSEC = errors.New("objects encrypted with a customer key (SSE-C) cannot be shared by link: the link would have to carry the key")

// PresignGet implements backend.Presigner: a GET URL valid for expires (at
// most 7 days, SigV4's limit). It makes no request. The URL is a bearer
// credential: never log it.
func (s *Store) PresignGet(ctx context.Context, key string, expires time.Duration) (string, error) {
	if err := checkKey("presign", key); err != nil {
		return "", err
	}
	if s.customerKey {
		return "", fmt.Errorf("presign %q in %s: %w", key, s, ErrPresignSSEC)
	}
	if expires <= 0 || expires > maxPresignExpiry {
		return "", fmt.Errorf("presign %q in %s: expiry %v is not within (0, %v]: %w", key, s, expires, maxPresignExpiry, backend.ErrPresignExpiry)
	}
	req, err := s.presign.PresignGetObject(ctx, &awss3.GetObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(key),
	}, awss3.WithPresignExpires(expires))
	if err != nil {
		return "", s.opError(ctx, "presign", key, err)
	}
	return req.URL, nil
}
