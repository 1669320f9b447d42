package integration

import (
	"os"
	"path/filepath"
	"testing"
)

// The public test suites from ../shared/third_party, built by
// scripts/thirdparty (which scripts/test runs) into .tools/thirdparty.
const (
	xfstestsDir  = "xfstests-fsx-63a29724"
	pjdfstestDir = "pjdfstest-85a8aea"
)

// thirdPartyPath returns the path of a built third-party file, such as
// thirdPartyPath(t, xfstestsDir, "fsx"). A missing build fails the test
// under CI and skips it elsewhere.
func thirdPartyPath(t testing.TB, suite, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", ".tools", "thirdparty", suite, name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not built (%v): run scripts/thirdparty", p, err)
		}
		t.Skipf("%s is not built: run scripts/thirdparty", p)
	}
	return p
}
