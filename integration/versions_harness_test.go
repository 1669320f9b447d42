package integration

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/integration/minio"
)

// newEnvWith is newEnv on a MinIO started with opts (TLS, a KMS).
func newEnvWith(t testing.TB, opts minio.Options) *env {
	t.Helper()
	requireFUSE(t)
	srv := minio.StartWith(t, opts)
	e := &env{t: t, minio: srv, s3: srv.Client(), bucket: "nimbus-test"}
	srv.MakeBucket(t, e.bucket)
	return e
}

// nimbusRun runs a nimbus command (not mount) with a timeout and returns
// its stdout, its stderr and its exit status.
func nimbusRun(t testing.TB, timeout time.Duration, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, nimbusBin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("nimbus %v: %v", args, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("nimbus %v: not done after %v", args, timeout)
	}
	return out.String(), errOut.String(), code
}

// nimbusOK runs a nimbus command that must succeed and returns its stdout.
func nimbusOK(t testing.TB, timeout time.Duration, args ...string) string {
	t.Helper()
	out, errOut, code := nimbusRun(t, timeout, args...)
	if code != 0 {
		t.Fatalf("nimbus %v: exit %d: %s", args, code, errOut)
	}
	return out
}
