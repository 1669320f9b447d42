package main

import (
	"fmt"
	"strings"

	"github.com/spf13/pflag"
)

// The -o options of nimbus mount, for fstab and mount(8).
//
// mount(8) runs mount.fuse for type fuse.nimbus, which runs
//
//	nimbus REMOTE MOUNTPOINT -o rw,cache_size=64MiB,…,dev,suid
//
// so every mount flag is also an -o option (a "_" in its name reads as
// "-"), and the options mount(8) and systemd add for themselves are taken
// and ignored.

// genericOptions mean something to mount(8), systemd or the kernel's other
// filesystems, and nothing to nimbus.
var genericOptions = map[string]bool{
	"rw": true, "defaults": true, "auto": true, "noauto": true, "_netdev": true, "nofail": true,
	"user": true, "users": true, "nouser": true, "owner": true, "group": true,
	"dev": true, "nodev": true, "suid": true, "nosuid": true, "exec": true, "noexec": true,
	"async": true, "atime": true, "noatime": true, "relatime": true, "nodiratime": true,
}

// optionAliases are -o names that are not flag names.
var optionAliases = map[string]string{"ro": "read-only"}

// notOptions are flags that make no sense as -o options.
var notOptions = map[string]bool{"options": true, "help": true}

// fuseRemote reports whether arg is a REMOTE: nimbus called as
// `nimbus REMOTE MOUNTPOINT -o …` by mount.fuse is nimbus mount.
func fuseRemote(arg string) bool {
	return strings.HasPrefix(arg, "s3://") || strings.HasPrefix(arg, "dir:")
}

// applyOptions sets the mount flags that the -o lists name. An option
// given with -o overrides the same flag given on the command line.
func applyOptions(f *pflag.FlagSet, lists []string) error {
	for _, list := range lists {
		for _, item := range strings.Split(list, ",") {
			if err := applyOption(f, strings.TrimSpace(item)); err != nil {
				return err
			}
		}
	}
	return nil
}

func applyOption(f *pflag.FlagSet, item string) error {
	key, val, hasVal := strings.Cut(item, "=")
	if key == "" || genericOptions[key] || strings.HasPrefix(key, "x-") || key == "comment" {
		return nil
	}
	name := strings.ReplaceAll(key, "_", "-")
	if alias, ok := optionAliases[name]; ok {
		name = alias
	}
	fl := f.Lookup(name)
	if fl == nil || notOptions[name] {
		return usageError{fmt.Sprintf("-o %s: unknown option (every mount flag is an option: see nimbus help mount)", key)}
	}
	if !hasVal {
		if fl.Value.Type() != "bool" {
			return usageError{fmt.Sprintf("-o %s needs a value, as in %s=…", key, key)}
		}
		val = "true"
	}
	if err := f.Set(name, val); err != nil {
		return usageError{fmt.Sprintf("-o %s: %v", item, err)}
	}
	return nil
}
