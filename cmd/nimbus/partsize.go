package main

import (
	"fmt"
	"os"
)

// partSizeEnv sets the part size of S3 multipart uploads (uploads while
// writing included), for tests and benchmarks that want several parts from
// a small file; unset, the s3 package's default (16 MiB). S3 takes 5 MiB to
// 5 GiB; the s3 package refuses anything else with a clear error.
const partSizeEnv = "NIMBUS_S3_PART_SIZE"

// envPartSize reads partSizeEnv: 0 when unset.
func envPartSize() (int64, error) {
	v := os.Getenv(partSizeEnv)
	if v == "" {
		return 0, nil
	}
	n, err := parseSize(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", partSizeEnv, err)
	}
	if n <= 0 {
		return 0, fmt.Errorf("%s=%s: the part size must be positive", partSizeEnv, v)
	}
	return n, nil
}
