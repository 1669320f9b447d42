//go:build race

package cache

// poisonReleased: under the race detector (the test suite's build), a
// blockBuf is overwritten when its last reference goes, so that a reader
// that uses one after releasing it reads garbage, and its test fails.
const poisonReleased = true
