// Package s3 is the Backend for Amazon S3 and S3-compatible stores (MinIO,
// Ceph RGW, R2, Wasabi…), built on aws-sdk-go-v2.
//
// # Failing fast
//
// A FUSE read of uncached content must fail within seconds when the store is
// gone, so the HTTP client dials with a short timeout and the SDK retries
// little: connection refused/reset and 5xx/throttling answers are retried a
// couple of times with sub-second backoff, while timeouts (which already cost
// seconds) are not retried at all. Callers that want persistence (the upload
// journal) retry on their own schedule, using backend.Retryable.
//
// # Conditional writes
//
// Put sends If-Match / If-None-Match and relies on the store to check them
// atomically (AWS S3 and MinIO do, on PutObject and on
// CompleteMultipartUpload alike). Some stores (MinIO included) ignore the
// conditions on CopyObject's destination and on DeleteObject, so Copy and
// Delete check them with a HeadObject first and also send the headers, for
// stores that honour them. Between that HEAD and the write there is a short
// race window in which a concurrent writer's change can be overwritten or
// deleted; on AWS S3, which checks the headers itself, the window is closed.
//
// # Large objects
//
// Put sends objects larger than Config.MultipartThreshold as a multipart
// upload (multipart.go): parts are read from the body in parallel and the
// write condition is checked when the upload is completed, so the object
// still appears atomically and conditionally. Copy is a single CopyObject,
// or above Config.CopyThreshold (5 GiB, CopyObject's limit) a multipart
// upload of UploadPartCopy parts, conditional on its Complete (copy.go).
// PutDelta
// (delta.go) sends a new version of a large object as a multipart upload
// whose unchanged parts are copied server-side from the current version.
// The Store is also a backend.PartUploader (parts.go): the journal sends a
// file being written as the parts of a multipart upload, one at a time, and
// completes it under the write condition once the file is closed.
package s3

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go/logging"

	"github.com/nimbus-fs/nimbus/backend"
)

// Transport limits. See the package doc.
const (
	dialTimeout           = 3 * time.Second
	responseHeaderTimeout = 15 * time.Second
	tlsHandshakeTimeout   = 5 * time.Second
	maxIdleConnsPerHost   = 64 // parallel ranged GETs of one file
	maxAttempts           = 3
	maxBackoff            = 400 * time.Millisecond

	// defaultRegion is used when neither Config nor the AWS config/env
	// names one.
	defaultRegion = "us-east-1"
	// maxKeyLen is S3's limit on key length, in bytes.
	maxKeyLen = 1024
	// maxPresignExpiry is SigV4's limit on presigned URL lifetime.
	maxPresignExpiry = 7 * 24 * time.Hour
)

// Config says which bucket to open and how to reach it.
type Config struct {
	// Bucket is the bucket name. Required.
	Bucket string
	// Endpoint is the URL of an S3-compatible store
	// ("http://127.0.0.1:9000"). When set, requests use path-style
	// addressing. Empty means AWS S3.
	Endpoint string
	// EndpointSource says where Endpoint was set, for messages
	// ("endpoint_url in profile default of ~/.aws/config"); "" means
	// EndpointFromFlag. New fills it in when the endpoint comes from the
	// AWS configuration (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_S3,
	// endpoint_url in a profile or its services section).
	EndpointSource string
	// VirtualHost keeps virtual-hosted-style addressing
	// (bucket.host/key) with a custom endpoint, which otherwise gets
	// path-style addressing (host/bucket/key), as most S3-compatible
	// stores need.
	VirtualHost bool
	// Region defaults to the AWS config/env (AWS_REGION, profile), else
	// us-east-1.
	Region string
	// AccessKey and SecretKey are static credentials, meant for tests.
	// Both empty means the standard AWS credential chain (env, shared
	// config and credentials files, SSO, IMDS…).
	AccessKey string
	SecretKey string
	// ProbePrefix is where New lists one key to check that the bucket
	// exists and the credentials work. Set it to the prefix nimbus will
	// use when the credentials may list only under it. Keys given to
	// Store methods are full keys either way; Store adds no prefix.
	ProbePrefix string

	// MultipartThreshold is the size above which Put sends an object as a
	// multipart upload instead of one PutObject. 0 means 64 MiB; at most
	// 5 GiB, PutObject's limit.
	MultipartThreshold int64
	// PartSize is the size of the parts of a multipart upload (the last
	// one may be smaller). 0 means 16 MiB; S3 takes 5 MiB to 5 GiB. S3
	// allows 10,000 parts, so objects over PartSize × 10,000 (156 GiB by
	// default) are sent with larger parts.
	PartSize int64
	// UploadConcurrency is how many parts of one Put are in flight at
	// once. 0 means 8. Parts are read from the body as they are sent,
	// not buffered, so this costs connections rather than memory.
	UploadConcurrency int
	// CopyThreshold is the size above which Copy and CopyVersion copy an
	// object as a multipart upload of UploadPartCopy parts (copy.go)
	// instead of one CopyObject. 0 means 5 GiB, CopyObject's limit; at
	// least 5 MiB, S3's smallest part.
	CopyThreshold int64

	// Encryption is the server-side encryption of every write (and, with
	// SSE-C, of every read); see sse.go. The zero value asks for none.
	Encryption Encryption
}

// Store is a Backend over one S3 bucket. It is safe for concurrent use.
type Store struct {
	client   *awss3.Client
	presign  *awss3.PresignClient
	uploader *manager.Uploader // multipart Puts; see multipart.go
	bucket   string
	endpoint string // "" for AWS S3
	// endpointSource says where endpoint was set when not by the flag.
	endpointSource string
	name           string // String(), computed once; never holds credentials
	// multipartThreshold is Config.MultipartThreshold with its default.
	multipartThreshold int64
	// copyThreshold is Config.CopyThreshold with its default.
	copyThreshold int64
	// customerKey: requests carry an SSE-C key (see sse.go).
	customerKey bool
}

var (
	_ backend.Backend   = (*Store)(nil)
	_ backend.Presigner = (*Store)(nil)
)

// New opens the bucket described by cfg and checks, with one ListObjectsV2
// of at most one key, that it exists and that the credentials are accepted.
// Its errors read well on their own and wrap:
//   - backend.ErrNoBucket: `bucket "x" not found at http://127.0.0.1:9000`;
//   - backend.ErrAccess: credentials missing, unknown or refused;
//   - backend.ErrOffline: the endpoint cannot be reached (this fails within
//     a few seconds, not minutes). The Store is returned with this error:
//     it works once the endpoint is reachable again.
//
// Invalid configuration (no bucket, bad endpoint URL) gives a plain error.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3: no bucket given")
	}
	if cfg.Endpoint != "" {
		if cfg.EndpointSource == "" {
			cfg.EndpointSource = EndpointFromFlag
		}
		ep, err := checkEndpoint(cfg.Endpoint, cfg.EndpointSource)
		if err != nil {
			return nil, err
		}
		cfg.Endpoint = ep
	}
	if (cfg.AccessKey == "") != (cfg.SecretKey == "") {
		return nil, errors.New("s3: static credentials need both an access key and a secret key")
	}
	cfg, err := withMultipartDefaults(cfg)
	if err != nil {
		return nil, err
	}
	if err := cfg.Encryption.check(); err != nil {
		return nil, err
	}

	opts := []func(*config.LoadOptions) error{
		// A BuildableClient, not a plain *http.Client: the loader adds
		// AWS_CA_BUNDLE to it, and refuses other client types.
		config.WithHTTPClient(newHTTPClient()),
		config.WithRetryer(newRetryer),
		// The SDK's own logger writes to stderr ("WARN falling back to
		// IMDSv1"); its lines belong in nimbus's log.
		config.WithLogger(sdkLogger{}),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.AccessKey != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3: load AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = defaultRegion
	}
	if cfg.Endpoint == "" {
		// An endpoint from the AWS configuration is a store other than
		// AWS S3 as much as one from the flag: it gets path-style
		// addressing too, and messages say where it was set.
		if ep, source := configuredEndpoint(awsCfg); ep != "" {
			if cfg.Endpoint, err = checkEndpoint(ep, source); err != nil {
				return nil, err
			}
			cfg.EndpointSource = source
			slog.Debug("s3: endpoint from the AWS configuration", "endpoint", cfg.Endpoint, "source", source)
		}
	}
	if err := checkCredentials(ctx, awsCfg); err != nil {
		return nil, err
	}

	s := newStore(awsCfg, cfg)
	err = s.probe(ctx, cfg.ProbePrefix)
	if region, ok := redirectRegion(err); ok && cfg.Endpoint == "" && region != awsCfg.Region {
		// AWS answers 301 when the bucket lives in another region and
		// names that region; follow it once rather than fail.
		slog.Info("s3: bucket is in another region", "bucket", cfg.Bucket, "region", region)
		awsCfg.Region = region
		s = newStore(awsCfg, cfg)
		err = s.probe(ctx, cfg.ProbePrefix)
	}
	if err != nil {
		err = s.openError(ctx, err)
		if errors.Is(err, backend.ErrOffline) {
			// Usable once the endpoint is back: a mount can start offline
			// from its persisted tree.
			return s, err
		}
		return nil, err
	}
	return s, nil
}

func newStore(awsCfg aws.Config, cfg Config) *Store {
	client := awss3.NewFromConfig(awsCfg, func(o *awss3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
			o.UsePathStyle = !cfg.VirtualHost
			// Third-party stores vary in their support of the newer
			// flexible checksums; send them only when required.
			o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		}
		// Ranged GETs cannot be checked against whole-object
		// checksums; If-Match on the ETag guards consistency instead.
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		if loopbackEndpoint(cfg.Endpoint) {
			// Over plain HTTP the SDK signs every body with its SHA-256,
			// and the store hashes it again to check: two passes over
			// each byte uploaded, a third of a large write's CPU. Over
			// TLS it sends bodies unsigned, the channel guarding them; a
			// loopback connection never leaves the machine, so the same
			// holds for it.
			o.APIOptions = append(o.APIOptions, UnsignedPayload)
		}
		if opt := cfg.Encryption.apiOption(); opt != nil {
			o.APIOptions = append(o.APIOptions, opt)
		}
	})
	name := "s3://" + cfg.Bucket
	if cfg.Endpoint != "" {
		name += " at " + cfg.Endpoint
	}
	return &Store{
		client:             client,
		presign:            awss3.NewPresignClient(client),
		uploader:           newUploader(client, cfg),
		bucket:             cfg.Bucket,
		endpoint:           cfg.Endpoint,
		endpointSource:     cfg.EndpointSource,
		name:               name,
		multipartThreshold: cfg.MultipartThreshold,
		copyThreshold:      cfg.CopyThreshold,
		customerKey:        cfg.Encryption.CustomerKey != nil,
	}
}

// newHTTPClient returns the SDK's buildable client tuned to fail fast when
// the store is unreachable and to keep enough idle connections for parallel
// ranged reads.
func newHTTPClient() *awshttp.BuildableClient {
	return awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) {
			d.Timeout = dialTimeout
			d.KeepAlive = 30 * time.Second
		}).
		WithTransportOptions(func(tr *http.Transport) {
			tr.ResponseHeaderTimeout = responseHeaderTimeout
			tr.TLSHandshakeTimeout = tlsHandshakeTimeout
			tr.MaxIdleConns = 4 * maxIdleConnsPerHost
			tr.MaxIdleConnsPerHost = maxIdleConnsPerHost
			tr.IdleConnTimeout = 90 * time.Second
		})
}

// newRetryer retries a little and quickly (see the package doc). There is no
// client-side retry quota: attempts are already few, and a quota drained
// during an outage would keep failing requests after the store is back.
func newRetryer() aws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = maxAttempts
		o.MaxBackoff = maxBackoff
		o.RateLimiter = ratelimit.None
		o.Retryables = append([]retry.IsErrorRetryable{retry.IsErrorRetryableFunc(noRetryOnTimeout)}, o.Retryables...)
	})
}

// noRetryOnTimeout refuses to retry timeouts: each already took seconds.
func noRetryOnTimeout(err error) aws.Ternary {
	var t interface{ Timeout() bool }
	if errors.As(err, &t) && t.Timeout() {
		return aws.FalseTernary
	}
	return aws.UnknownTernary
}

// probe lists at most one key, which needs the bucket and the credentials.
func (s *Store) probe(ctx context.Context, prefix string) error {
	in := &awss3.ListObjectsV2Input{
		Bucket:  aws.String(s.bucket),
		MaxKeys: aws.Int32(1),
		// The key is not read, but it must parse: see list.
		EncodingType: types.EncodingTypeUrl,
	}
	if prefix != "" {
		in.Prefix = aws.String(prefix)
	}
	_, err := s.client.ListObjectsV2(ctx, in)
	return err
}

// redirectRegion returns the region named by a 301 PermanentRedirect answer.
func redirectRegion(err error) (string, bool) {
	var respErr *awshttp.ResponseError
	if httpStatus(err) != http.StatusMovedPermanently || !errors.As(err, &respErr) {
		return "", false
	}
	region := respErr.Response.Header.Get("X-Amz-Bucket-Region")
	return region, region != ""
}

// openError turns a failed probe into the error New returns.
func (s *Store) openError(ctx context.Context, err error) error {
	where := s.where()
	if ctx.Err() != nil {
		return fmt.Errorf("open %s: %w", s, err)
	}
	if region, ok := redirectRegion(err); ok {
		return &openError{
			msg:   fmt.Sprintf("bucket %q is in region %s, not the one configured", s.bucket, region),
			kind:  backend.ErrNoBucket,
			cause: err,
			where: where,
		}
	}
	switch kind := classify(err); kind {
	case backend.ErrNoBucket, backend.ErrNotFound:
		// A bare 404 to a bucket-level request is the bucket.
		return &openError{
			msg:   fmt.Sprintf("bucket %q not found at %s", s.bucket, where),
			kind:  backend.ErrNoBucket,
			cause: err,
			where: where,
		}
	case backend.ErrAccess:
		return &openError{
			msg:   fmt.Sprintf("access to bucket %q at %s denied (%s)", s.bucket, where, reason(err)),
			kind:  backend.ErrAccess,
			cause: err,
			where: where,
		}
	case backend.ErrOffline:
		return &openError{
			msg:   fmt.Sprintf("cannot reach %s (%s)", where, reason(err)),
			kind:  backend.ErrOffline,
			cause: err,
			where: where,
		}
	case nil:
		return &openError{
			msg:   fmt.Sprintf("open bucket %q at %s: %s", s.bucket, where, reason(err)),
			kind:  err,
			cause: err,
			where: where,
		}
	default:
		return &openError{
			msg:   fmt.Sprintf("open bucket %q at %s: %s", s.bucket, where, reason(err)),
			kind:  kind,
			cause: err,
			where: where,
		}
	}
}

// ErrNoCredentials is wrapped by New's error when no credentials could be
// found or loaded; the message says where to set them.
var ErrNoCredentials = errors.New("no AWS credentials")

// checkCredentials loads the credentials once before the first request, so
// that their absence reads as such rather than as a chain of SDK errors
// ending in the EC2 metadata service, the last place the chain looks.
func checkCredentials(ctx context.Context, awsCfg aws.Config) error {
	if awsCfg.Credentials == nil {
		return nil
	}
	_, err := awsCfg.Credentials.Retrieve(ctx)
	if err == nil {
		return nil
	}
	slog.Debug("s3: load credentials", "err", err)
	msg := "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
	if !strings.Contains(err.Error(), "EC2 IMDS") {
		// A source was found (a profile, SSO, a web identity) but failed.
		msg = "AWS credentials could not be loaded (" + reason(err) + "): check AWS_PROFILE and ~/.aws/config"
	}
	return &openError{msg: msg, kind: backend.ErrAccess, cause: fmt.Errorf("%w: %w", ErrNoCredentials, err)}
}

// sdkLogger sends the SDK's log lines to slog, at debug level.
type sdkLogger struct{}

func (sdkLogger) Logf(c logging.Classification, format string, v ...any) {
	slog.Debug("aws sdk: "+fmt.Sprintf(format, v...), "class", string(c))
}

// where names the endpoint for messages.
func (s *Store) where() string {
	if s.endpoint != "" && s.endpointSource != "" && s.endpointSource != EndpointFromFlag {
		return s.endpoint + " (" + s.endpointSource + ")"
	}
	if s.endpoint != "" {
		return s.endpoint
	}
	return "AWS S3 (region " + s.client.Options().Region + ")"
}

// String returns "s3://bucket at ENDPOINT", or "s3://bucket" for AWS S3.
func (s *Store) String() string { return s.name }

// checkKey refuses keys S3 would refuse, without a request.
func checkKey(op, key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%s: empty key: %w", op, backend.ErrInvalidKey)
	case len(key) > maxKeyLen:
		return fmt.Errorf("%s %.40q…: key is %d bytes, more than %d: %w", op, key, len(key), maxKeyLen, backend.ErrInvalidKey)
	case !utf8.ValidString(key):
		return fmt.Errorf("%s %q: key is not valid UTF-8: %w", op, key, backend.ErrInvalidKey)
	}
	return nil
}

// quoteETag makes an entity tag for If-Match headers.
func quoteETag(etag string) *string {
	return aws.String(`"` + etag + `"`)
}

// unquoteETag strips the quotes S3 puts around ETags.
func unquoteETag(etag *string) string {
	return strings.Trim(aws.ToString(etag), `"`)
}
