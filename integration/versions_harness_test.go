package integration

import (
	"bytes"
	"testing"
	"time"
)

// nimbusRun runs a nimbus command (not mount) with a timeout and returns
// its stdout, its stderr and its exit status.
func nimbusRun(t testing.TB, timeout time.Duration, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = nimbusCommand(t, timeout, nil, &out, &errOut, args...)
	if code == -1 {
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
