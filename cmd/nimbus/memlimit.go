package main

import (
	"os"
	"runtime/debug"
)

// softMemoryLimit is the Go heap size past which the collector works
// harder (runtime/debug.SetMemoryLimit). A mount's live heap is small and
// bounded (metadata lives in bbolt, live inodes are capped by the vfs),
// but it allocates steadily while listing; with the default GOGC alone
// the heap may grow to twice its live size before a collection. This is a
// soft limit: past it the collector uses more CPU, it never fails an
// allocation. GOMEMLIMIT, when set, wins.
const softMemoryLimit = 96 << 20

// setSoftMemoryLimit applies softMemoryLimit to a serving mount.
func setSoftMemoryLimit() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(softMemoryLimit)
	}
}
