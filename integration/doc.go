// Package integration runs the real nimbus binary on a real FUSE mount over
// a real MinIO server, and acts on the mount with ordinary file operations.
// It is the third of nimbus's three test tiers:
//
//   - unit tests run each package against the dir backend or a small fake
//     (backend/conformance runs the same suite against every backend,
//     MinIO included);
//   - the in-process tier (vfs's inprocess_*_test.go) mounts vfs over the
//     dir backend inside the test binary, fast enough to run the model
//     test with thousands of operations;
//   - this package: the binary, built once per run (with -race for the
//     race tests), mounted with the flags users give it.
//
// Every mount and process a test starts is torn down by t.Cleanup, even when
// the test fails, so that a stuck mount never hangs the next test, and a
// test never touches a mount it did not make. Subpackages hold what the
// tiers share: minio (the server as a subprocess), s3proxy (a counting
// proxy for the benchmark), wait (the one wait-until helper).
package integration
