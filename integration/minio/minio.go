// Package minio runs a real MinIO server as a subprocess for tests.
//
// It is a normal (non-test) package so that both the backend/s3 tests and the
// end-to-end tests in integration/ can share it. Each Server owns one
// process, one data folder and one pair of ports; t.Cleanup kills the process
// group even when the test fails or panics, and the test binary dying takes
// the server with it (Pdeathsig).
//
// The binary is found at $NIMBUS_MINIO or else at <repo>/.tools/bin/minio,
// where <repo> is the nearest folder above the working directory that holds
// go.mod. `make tools` builds it. When it is missing the test is skipped,
// unless CI=true, where a missing binary is a failure: CI must not go green by
// skipping the tests that matter.
package minio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

const (
	// Region is the region the server reports and Client uses.
	Region = "us-east-1"

	readyTimeout = 60 * time.Second
	// logTail bounds how much of the server log a failed test prints.
	logTail = 64 << 10
)

// Server is one running (or stopped) MinIO process.
//
// Endpoint, AccessKey and SecretKey stay valid across Stop and Restart.
// Stop, Restart and MakeBucket call t.Fatal on failure, so they must be called
// from the test's goroutine.
type Server struct {
	Endpoint  string // http://127.0.0.1:PORT, or https:// with Options.TLS
	AccessKey string
	SecretKey string
	// CAFile is the PEM certificate a TLS server presents (Options.TLS),
	// for AWS_CA_BUNDLE; "" without TLS.
	CAFile string

	opts Options

	tb          testing.TB
	bin         string
	addr        string // 127.0.0.1:PORT
	consoleAddr string
	dataDir     string
	logPath     string
	certsDir    string // --certs-dir, with Options.TLS

	mu     sync.Mutex
	cmd    *exec.Cmd     // GUARDED_BY(mu); nil while stopped
	exited chan struct{} // GUARDED_BY(mu); closed when cmd has been waited for
}

// Binary returns the path of the minio binary and whether it exists.
func Binary() (string, bool) {
	if p := os.Getenv("NIMBUS_MINIO"); p != "" {
		return p, isExecutable(p)
	}
	root, err := repoRoot()
	if err != nil {
		return "", false
	}
	p := filepath.Join(root, ".tools", "bin", "minio")
	return p, isExecutable(p)
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// repoRoot walks up from the working directory to the folder holding go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Start runs a fresh MinIO server on free local ports with an empty data
// folder and waits until it is ready. A missing binary skips the test
// (fails it when CI=true). The server is killed when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with options; the zero Options is Start.
func StartWith(t testing.TB, opts Options) *Server {
	t.Helper()
	bin, ok := Binary()
	if !ok {
		msg := fmt.Sprintf("minio binary not found at %s: run `make tools` (or set NIMBUS_MINIO)", bin)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	s := &Server{
		AccessKey: "nimbus-test",
		SecretKey: "nimbus-test-secret",
		tb:        t,
		bin:       bin,
		dataDir:   t.TempDir(),
		logPath:   filepath.Join(t.TempDir(), "minio.log"),
		opts:      opts,
	}
	// Registered after the TempDirs, so it runs before they are removed.
	t.Cleanup(func() {
		s.kill()
		if t.Failed() {
			s.printLog()
		}
	})

	// A free port can be taken by someone else between our probe and
	// minio's bind; try a few pairs before giving up.
	var lastErr error
	for range 3 {
		addr, err := freeAddr()
		if err != nil {
			t.Fatalf("minio: %v", err)
		}
		consoleAddr, err := freeAddr()
		if err != nil {
			t.Fatalf("minio: %v", err)
		}
		s.addr, s.consoleAddr = addr, consoleAddr
		s.Endpoint = "http://" + addr
		if opts.TLS {
			if s.certsDir == "" {
				if err := s.makeCert(t.TempDir()); err != nil {
					t.Fatalf("minio: %v", err)
				}
			}
			s.Endpoint = "https://" + addr
		}
		if lastErr = s.start(); lastErr == nil {
			return s
		}
		s.kill()
	}
	t.Fatalf("minio: %v", lastErr)
	return nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	return addr, nil
}

// start launches the process on s.addr and waits until it is ready.
func (s *Server) start() error {
	logFile, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	// The child holds its own descriptor; ours is not needed after Start.
	defer logFile.Close()

	args := []string{"server", "--quiet", "--address", s.addr, "--console-address", s.consoleAddr}
	if s.certsDir != "" {
		args = append(args, "--certs-dir", s.certsDir)
	}
	cmd := exec.Command(s.bin, append(args, s.dataDir)...)
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+s.AccessKey,
		"MINIO_ROOT_PASSWORD="+s.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"MINIO_CI_CD=on",
	)
	if s.opts.KMSSecretKey != "" {
		cmd.Env = append(cmd.Env, "MINIO_KMS_SECRET_KEY="+s.opts.KMSSecretKey)
	}
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,            // so that kill reaches any children
		Pdeathsig: syscall.SIGKILL, // no orphan when the test binary dies
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		// The exit status of a killed server is uninteresting; the log
		// holds anything worth knowing.
		_ = cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	return s.waitReady(exited)
}

func (s *Server) waitReady(exited <-chan struct{}) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: s.transport()}
	deadline := time.Now().Add(readyTimeout)
	for {
		if ok, err := s.ready(client); ok {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("server at %s not ready after %v: %v", s.Endpoint, readyTimeout, err)
		}
		select {
		case <-exited:
			return fmt.Errorf("server at %s exited before it was ready (see log)", s.Endpoint)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *Server) ready(client *http.Client) (bool, error) {
	for _, path := range []string{"/minio/health/live", "/minio/health/ready"} {
		resp, err := client.Get(s.Endpoint + path)
		if err != nil {
			return false, err
		}
		// Drain so the connection is reused; errors here do not matter.
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, fmt.Errorf("%s: %s", path, resp.Status)
		}
	}
	return true, nil
}

// kill SIGKILLs the process group and waits for the process to be reaped.
func (s *Server) kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd, s.exited = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	// ESRCH just means it is already gone.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-exited
}

func (s *Server) printLog() {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		s.tb.Logf("minio log: %v", err)
		return
	}
	if len(b) > logTail {
		b = b[len(b)-logTail:]
	}
	s.tb.Logf("minio log (%s):\n%s", s.logPath, b)
}

// Stop kills the server abruptly (SIGKILL, like a crash or a lost network)
// and waits until it has exited, so that the endpoint refuses connections.
// Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.kill()
}

// Pause freezes the server (SIGSTOP): it keeps accepting connections but
// answers nothing, like a network that stops delivering. Requests in flight
// hang until Resume.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume lets a paused server go on (SIGCONT).
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.tb.Helper()
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		s.tb.Fatalf("minio: %v to a stopped server", sig)
	}
	if err := syscall.Kill(-cmd.Process.Pid, sig); err != nil {
		s.tb.Fatalf("minio: %v: %v", sig, err)
	}
}

// Restart starts the server again on the same port and data folder, after
// stopping it if it is running, and waits until it is ready. Objects written
// before Stop are still there.
func (s *Server) Restart() {
	s.tb.Helper()
	s.kill()
	// Our port may be briefly held by someone else; retry for a while.
	var err error
	for range 5 {
		if err = s.start(); err == nil {
			return
		}
		s.kill()
		time.Sleep(200 * time.Millisecond)
	}
	s.tb.Fatalf("minio restart: %v", err)
}

// Client returns an S3 client for the server: path-style addressing, static
// credentials, region us-east-1.
func (s *Server) Client() *awss3.Client {
	return awss3.New(awss3.Options{
		Region:                     Region,
		BaseEndpoint:               aws.String(s.Endpoint),
		UsePathStyle:               true,
		Credentials:                credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
		HTTPClient:                 &http.Client{Transport: s.transport()},
	})
}

// MakeBucket creates a bucket, failing the test if that fails.
func (s *Server) MakeBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.Client().CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("minio: create bucket %q: %v", name, err)
	}
}

// Env returns the environment a child process (the nimbus binary) needs to
// reach the server through the standard AWS credential chain.
func (s *Server) Env() []string {
	env := []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_REGION=" + Region,
	}
	if s.CAFile != "" {
		env = append(env, "AWS_CA_BUNDLE="+s.CAFile)
	}
	return env
}

// String describes the server for test logs.
func (s *Server) String() string {
	return "minio at " + s.Endpoint + " (data " + s.dataDir + ")"
}

var bucketSeq atomic.Int64

// BucketName turns a test name into a valid, unique-enough bucket name:
// lower case, 3–63 characters of [a-z0-9-], starting and ending with a
// letter or digit.
func BucketName(t testing.TB) string {
	var b strings.Builder
	for _, r := range strings.ToLower(t.Name()) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-")
	suffix := fmt.Sprintf("-%d-%x", bucketSeq.Add(1), time.Now().UnixNano()&0xffffff)
	if max := 63 - len(suffix); len(name) > max {
		name = strings.TrimRight(name[:max], "-")
	}
	if name == "" {
		name = "t"
	}
	return name + suffix
}
