package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// parseSize reads sizes such as 512MiB, 2GiB, 10G or 1048576. Units without
// "B" and units with "iB" are binary; KB, MB, GB and TB are decimal. A size
// that does not fit in an int64 is an error, not a wrapped-around number.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := len(t)
	for i > 0 && (t[i-1] < '0' || t[i-1] > '9') && t[i-1] != '.' {
		i--
	}
	num, unit := t[:i], strings.ToUpper(t[i:])
	// Digits and at most one point: ParseFloat alone would also take
	// exponents, hex, "Inf" and "NaN".
	if num == "" || strings.Trim(num, "0123456789.") != "" || strings.Count(num, ".") > 1 || num == "." {
		return 0, fmt.Errorf("size %q: expected a number with an optional unit, as in 512MiB or 10GiB", s)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: expected a number with an optional unit, as in 512MiB or 10GiB", s)
	}
	mult := map[string]float64{
		"": 1, "B": 1,
		"K": 1 << 10, "KI": 1 << 10, "KIB": 1 << 10, "KB": 1e3,
		"M": 1 << 20, "MI": 1 << 20, "MIB": 1 << 20, "MB": 1e6,
		"G": 1 << 30, "GI": 1 << 30, "GIB": 1 << 30, "GB": 1e9,
		"T": 1 << 40, "TI": 1 << 40, "TIB": 1 << 40, "TB": 1e12,
		"P": 1 << 50, "PI": 1 << 50, "PIB": 1 << 50, "PB": 1e15,
	}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("size %q: unknown unit %q (use B, KiB, MiB, GiB, TiB or PiB)", s, t[i:])
	}
	// 2^63 is exactly representable; anything at or above it overflows.
	if v*mult >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q is too large (at most 8 EiB)", s)
	}
	return int64(v * mult), nil
}

// sizeValue is a pflag.Value holding a size in bytes, parsed by parseSize.
type sizeValue int64

// String writes the size back in the form parseSize reads (the defaults in
// help: 10GiB, 32MiB).
func (v *sizeValue) String() string {
	n := int64(*v)
	for _, u := range []struct {
		name string
		size int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}

func (v *sizeValue) Type() string { return "SIZE" }

func (v *sizeValue) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*v = sizeValue(n)
	return nil
}

// formatBytes renders n for people: 1.5 GiB, 300 MiB, 12 KiB, 17 B.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
