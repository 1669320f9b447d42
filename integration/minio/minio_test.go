package minio

import (
	"context"
	"fmt"
	"io"
	"net"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

func TestStartStopRestart(t *testing.T) {
	srv := Start(t)
	if !strings.HasPrefix(srv.Endpoint, "http://127.0.0.1:") {
		t.Fatalf("Endpoint = %q", srv.Endpoint)
	}
	ctx := context.Background()
	bucket := BucketName(t)
	srv.MakeBucket(t, bucket)
	c := srv.Client()
	if _, err := c.PutObject(ctx, &awss3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String("k"), Body: strings.NewReader("persisted"),
	}); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	addr := strings.TrimPrefix(srv.Endpoint, "http://")
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatal("the server still accepts connections after Stop")
	}
	srv.Stop() // stopping twice is harmless

	srv.Restart()
	out, err := c.GetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("k")})
	if err != nil {
		t.Fatalf("Get after restart: %v", err)
	}
	defer out.Body.Close()
	if data, err := io.ReadAll(out.Body); err != nil || string(data) != "persisted" {
		t.Fatalf("after restart read %q, %v; want the data from before", data, err)
	}
}

func TestEnv(t *testing.T) {
	srv := &Server{AccessKey: "ak", SecretKey: "sk"}
	want := []string{"AWS_ACCESS_KEY_ID=ak", "AWS_SECRET_ACCESS_KEY=sk", "AWS_REGION=us-east-1"}
	if got := srv.Env(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("Env() = %q; want %q", got, want)
	}
}

func TestBucketName(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$`)
	seen := map[string]bool{}
	for _, name := range []string{"TestX", "Test/Sub_Test/" + strings.Repeat("Long", 30), "---"} {
		t.Run(name, func(t *testing.T) {
			for range 3 {
				b := BucketName(t)
				if !valid.MatchString(b) {
					t.Fatalf("BucketName = %q; not a valid bucket name", b)
				}
				if seen[b] {
					t.Fatalf("BucketName repeated %q", b)
				}
				seen[b] = true
			}
		})
	}
}

func TestMissingBinarySkips(t *testing.T) {
	t.Setenv("NIMBUS_MINIO", "/nonexistent/minio")
	t.Setenv("CI", "")
	reached := false
	t.Run("start", func(t *testing.T) {
		Start(t)
		reached = true
	})
	if reached {
		t.Fatal("Start returned without a binary")
	}
	if _, ok := Binary(); ok {
		t.Fatal("Binary() found /nonexistent/minio")
	}
}

// recorder is a testing.TB that records how Start gave up. Fatal and Skip
// end the goroutine, as the real ones do.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatal(args ...any) {
	r.fatal = strings.TrimSpace(fmt.Sprintln(args...))
	runtime.Goexit()
}
func (r *recorder) Skip(args ...any) {
	r.skip = strings.TrimSpace(fmt.Sprintln(args...))
	runtime.Goexit()
}

func TestMissingBinaryFailsOnCI(t *testing.T) {
	t.Setenv("NIMBUS_MINIO", "/nonexistent/minio")
	t.Setenv("CI", "true")
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Start(r)
	}()
	<-done
	if r.skip != "" || !strings.Contains(r.fatal, "make tools") {
		t.Fatalf("Start on CI without a binary: fatal %q, skip %q; want a fatal naming `make tools`", r.fatal, r.skip)
	}
}
