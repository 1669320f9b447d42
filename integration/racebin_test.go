package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// raceBin is nimbus built with -race, built once by the first test that
// asks for it (withRaceBinary).
var (
	raceBinOnce sync.Once
	raceBin     string
	raceBinErr  error
)

// withRaceBinary makes the mounts the test starts run nimbus built with the
// race detector, so that a data race in the daemon under a concurrent
// workload fails the test (the detector exits with status 66 and logs
// "WARNING: DATA RACE"). The binary lives next to nimbusBin.
func withRaceBinary(t *testing.T) {
	t.Helper()
	raceBinOnce.Do(func() {
		raceBin = filepath.Join(filepath.Dir(nimbusBin), "nimbus-race")
		build := exec.Command("go", "build", "-race", "-o", raceBin, "../cmd/nimbus")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		raceBinErr = build.Run()
	})
	if raceBinErr != nil {
		t.Fatalf("build nimbus with -race: %v", raceBinErr)
	}
	saved := nimbusBin
	nimbusBin = raceBin
	t.Cleanup(func() { nimbusBin = saved })
}
