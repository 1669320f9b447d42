package main

import (
	"fmt"
	"os"
)

// Sizes for the s3 store that tests and benchmarks set in a mount's
// environment (no flag: users have no reason to change them). S3 takes 5
// MiB to 5 GiB for both; the s3 package refuses anything else with a clear
// error.
const (
	// partSizeEnv sets the part size of S3 multipart uploads (uploads while
	// writing included), so that a small file makes several parts; unset,
	// the s3 package's default (16 MiB).
	partSizeEnv = "NIMBUS_S3_PART_SIZE"
	// copyThresholdEnv lowers the size above which the s3 store copies an
	// object in parts (5 GiB, CopyObject's limit), so that tests can cover
	// multipart copies without 5 GiB files. Unset: the default.
	copyThresholdEnv = "NIMBUS_S3_COPY_THRESHOLD"
)

// sizeFromEnv reads the size in the environment variable name: 0 when
// unset, an error naming it when it is not a positive size.
func sizeFromEnv(name string) (int64, error) {
	v := os.Getenv(name)
	if v == "" {
		return 0, nil
	}
	n, err := parseSize(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	if n <= 0 {
		return 0, fmt.Errorf("%s=%s: expected a positive size, such as 8MiB", name, v)
	}
	return n, nil
}
