package minio

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// Options change how StartWith runs the server. The zero value is Start's
// plain-HTTP server without a KMS.
type Options struct {
	// TLS serves HTTPS with a self-signed certificate for 127.0.0.1, made
	// for the test (MinIO refuses SSE-C over plain HTTP). Server.CAFile is
	// that certificate; Client and Env trust it.
	TLS bool
	// KMSSecretKey, when set, is MINIO_KMS_SECRET_KEY ("name:<base64 of
	// 32 bytes>"): a built-in KMS with that one key, which SSE-S3 and
	// SSE-KMS need.
	KMSSecretKey string
}

// makeCert writes a self-signed certificate and its key for 127.0.0.1 into
// dir, as MinIO's --certs-dir wants them (public.crt, private.key).
func (s *Server) makeCert(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("certificate key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "nimbus test minio"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("certificate key: %w", err)
	}
	certPath := filepath.Join(dir, "public.crt")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "private.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	s.certsDir, s.CAFile = dir, certPath
	return nil
}

// transport is the HTTP transport that reaches the server: one that trusts
// its certificate when it serves TLS.
func (s *Server) transport() http.RoundTripper {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if s.CAFile == "" {
		return tr
	}
	pem, err := os.ReadFile(s.CAFile)
	if err != nil {
		s.tb.Fatalf("minio: read certificate: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		s.tb.Fatalf("minio: no certificate in %s", s.CAFile)
	}
	tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	return tr
}

// HTTPClient returns a client that reaches the server (and trusts its
// certificate with Options.TLS), for requests outside the S3 API such as
// fetching a presigned URL.
func (s *Server) HTTPClient() *http.Client {
	return &http.Client{Transport: s.transport(), Timeout: time.Minute}
}

// EnableVersioning turns on versioning of bucket, failing the test if that
// fails.
func (s *Server) EnableVersioning(t testing.TB, bucket string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := s.Client().PutBucketVersioning(ctx, &awss3.PutBucketVersioningInput{
		Bucket:                  aws.String(bucket),
		VersioningConfiguration: &types.VersioningConfiguration{Status: types.BucketVersioningStatusEnabled},
	})
	if err != nil {
		t.Fatalf("minio: enable versioning of %q: %v", bucket, err)
	}
}
