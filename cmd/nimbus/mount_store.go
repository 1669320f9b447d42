package main

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/nimbus-fs/nimbus/backend/s3"
)

// storeOptions are the mount flags about what the store does with the
// data: encryption, the trash, the point-in-time view.
type storeOptions struct {
	sse         string
	kmsKeyID    string
	sseCKeyFile string
	trash       time.Duration
	at          string
	atTime      time.Time // --at, resolved when the flags are checked
}

// defaultTrash is how long an unversioned bucket keeps deleted files.
const defaultTrash = 30 * 24 * time.Hour

func (s *storeOptions) addFlags(f *pflag.FlagSet) {
	s.trash = defaultTrash
	f.StringVar(&s.sse, "sse", "", "server-side encryption of every upload: AES256 or aws:kms")
	f.StringVar(&s.kmsKeyID, "sse-kms-key-id", "", "KMS key `ID` for --sse aws:kms (default: the store's)")
	f.StringVar(&s.sseCKeyFile, "sse-c-key-file", "", "encrypt with a customer key (SSE-C): a `file` of 32 bytes, raw or base64")
	f.Var((*daysValue)(&s.trash), "trash", "keep deletes on an unversioned bucket in .nimbus-trash this long (`duration`: 30d, 12h; 0 = off)")
	f.StringVar(&s.at, "at", "", "read-only view of a versioned bucket as it was at `TIME` (RFC 3339, or a duration ago such as 2h or 3d)")
}

// finish checks the store flags of o, and makes --at read-only. The past
// does not change, so unless the flags say otherwise an --at mount trusts
// a listing for a day and does not poll.
func (s *storeOptions) finish(o *mountOptions, flags *pflag.FlagSet) error {
	if s.sse != "" && s.sse != s3.SSES3 && s.sse != s3.SSEKMS {
		return usageError{fmt.Sprintf("--sse %q: use AES256 or aws:kms", s.sse)}
	}
	if s.kmsKeyID != "" && s.sse != s3.SSEKMS {
		return usageError{"--sse-kms-key-id needs --sse aws:kms"}
	}
	if s.sseCKeyFile != "" && s.sse != "" {
		return usageError{"--sse-c-key-file and --sse exclude each other: choose one"}
	}
	if s.trash < 0 {
		return usageError{"--trash cannot be negative (0 turns the trash off)"}
	}
	if o.remote.scheme == "dir" && s.at != "" {
		return usageError{"--at needs a versioned s3:// bucket: a dir: remote keeps no earlier versions"}
	}
	if o.remote.scheme == "dir" && (s.sse != "" || s.sseCKeyFile != "") {
		return usageError{"--sse, --sse-c-key-file and --at apply to s3:// remotes only"}
	}
	if s.sseCKeyFile != "" {
		// Checked now, so that a bad file is a one-line error before
		// anything is mounted; read again when the store opens.
		if _, err := readCustomerKey(s.sseCKeyFile); err != nil {
			return err
		}
	}
	if s.at != "" {
		t, err := parseAt(s.at, time.Now())
		if err != nil {
			return usageError{err.Error()}
		}
		s.atTime = t
		o.readOnly = true
		if flags == nil || !flags.Changed("dir-ttl") {
			o.dirTTL = 24 * time.Hour
		}
		if flags == nil || !flags.Changed("poll") {
			o.poll = 0
		}
	}
	return nil
}

// atSuffix sets the cache folder of an --at mount apart from the live
// mount's and from other times': "-at-20260102T150405Z", or "".
func (s *storeOptions) atSuffix() string {
	if s.at == "" {
		return ""
	}
	return "-at-" + s.atTime.UTC().Format("20060102T150405Z")
}

// encryption returns the s3 store's Encryption for the flags.
func (s *storeOptions) encryption() (s3.Encryption, error) {
	enc := s3.Encryption{SSE: s.sse, KMSKeyID: s.kmsKeyID}
	if s.sseCKeyFile != "" {
		k, err := readCustomerKey(s.sseCKeyFile)
		if err != nil {
			return enc, err
		}
		enc.CustomerKey = k
	}
	return enc, nil
}

// readCustomerKey reads an SSE-C key file. Its errors never show the
// content.
func readCustomerKey(path string) (s3.CustomerKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("--sse-c-key-file: %w", err)
	}
	if fi.Size() > 1024 {
		return nil, fmt.Errorf("--sse-c-key-file %s: %d bytes is not a key (32 bytes, raw or base64)", path, fi.Size())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--sse-c-key-file: %w", err)
	}
	k, err := s3.ParseCustomerKey(b)
	if err != nil {
		return nil, fmt.Errorf("--sse-c-key-file %s: %w", path, err)
	}
	return k, nil
}

// parseAt reads --at: an RFC 3339 time, or a duration before now (Go's
// units, plus d for days).
func parseAt(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		if t.After(now) {
			return time.Time{}, fmt.Errorf("--at %s is in the future", s)
		}
		return t, nil
	}
	d, err := parseDays(s)
	if err != nil || d <= 0 {
		return time.Time{}, fmt.Errorf("--at %q: expected an RFC 3339 time (2026-01-02T15:04:05Z) or a duration ago (2h, 3d)", s)
	}
	return now.Add(-d), nil
}

// parseDays is time.ParseDuration that also takes whole days ("30d").
func parseDays(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 || days > 100*365 {
			return 0, fmt.Errorf("duration %q: expected a number of days such as 30d", s)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errors.New("expected a duration such as 30d, 12h or 90m")
	}
	return d, nil
}

// daysValue is a pflag.Value holding a duration parsed by parseDays.
type daysValue time.Duration

func (v *daysValue) String() string {
	d := time.Duration(*v)
	if d != 0 && d%(24*time.Hour) == 0 {
		return strconv.Itoa(int(d/(24*time.Hour))) + "d"
	}
	return d.String()
}

func (v *daysValue) Type() string { return "DUR" }

func (v *daysValue) Set(s string) error {
	d, err := parseDays(s)
	if err != nil {
		return err
	}
	*v = daysValue(d)
	return nil
}

// pinAt returns args with the value of --at replaced by the time it
// resolved to, so that a --daemon child running them shows the same time
// ("2h" would be later there) and uses the same cache folder.
func (s *storeOptions) pinAt(args []string) []string {
	if s.at == "" {
		return args
	}
	out := slices.Clone(args)
	at := s.atTime.UTC().Format(time.RFC3339Nano)
	for i := 0; i < len(out); i++ {
		switch {
		case out[i] == "--":
			return out
		case out[i] == "--at" && i+1 < len(out):
			out[i+1] = at
			i++
		case strings.HasPrefix(out[i], "--at="):
			out[i] = "--at=" + at
		}
	}
	return out
}
