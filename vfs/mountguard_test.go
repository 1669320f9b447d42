package vfs

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The in-process tests serve a FUSE mount from the process that uses it. If
// that process dies (a panic in any goroutine) while one of its own threads
// waits in the kernel for an answer from the mount, it never finishes
// exiting: the kernel waits for the server's reply, the server is gone, and
// the device is only closed once every thread has exited. go test then
// hangs past its timeout, with the panic's output lost, until the FUSE
// connection is aborted by hand (this happened once: a panic in a
// background listing during TestModelDifferential).
//
// guardMount starts a watchdog process for mnt: once this process is gone
// or dying (its main thread a zombie, or SIGKILL pending in one of its
// threads, as an exit does to them), it aborts the mount's FUSE
// connection, so that the exit completes and the failure shows, and
// detaches the dead mount. It checks
// first that the connection still belongs to mnt, so that it never
// touches a mount the test did not make, and it ends by itself once mnt
// is unmounted.
const guardScript = `pid=$1 dev=$2 mnt=$3
ours() { awk -v dev="$dev" -v mnt="$mnt" '$3 == dev && $5 == mnt { found = 1 } END { exit !found }' /proc/self/mountinfo; }
alive() {
	[ -d /proc/$pid ] && awk '
		FILENAME ~ /\/stat$/ { if ($3 == "Z") dying = 1; next }
		/^(SigPnd|ShdPnd):/ { if (index("13579bdfBDF", substr($2, length($2) - 2, 1))) dying = 1 }
		END { exit dying }' /proc/$pid/stat /proc/$pid/task/*/status 2>/dev/null
}
while alive; do
	ours || exit 0
	sleep 0.5
done
ours && echo 1 >/sys/fs/fuse/connections/${dev#*:}/abort 2>/dev/null && umount -l "$mnt"
`

func guardMount(t testing.TB, mnt string) {
	t.Helper()
	if strings.ContainsAny(mnt, " \t\n\\") {
		t.Fatalf("guard mount %q: mountinfo escapes such names", mnt)
	}
	dev, ok := mountDevice(mnt)
	if !ok {
		t.Fatalf("guard mount %s: not in /proc/self/mountinfo", mnt)
	}
	cmd := exec.Command("sh", "-c", guardScript, "guard", fmt.Sprint(os.Getpid()), dev, mnt)
	// Its own process group: a signal to the test's group must not take
	// it along before it has done its job.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("guard mount %s: %v", mnt, err)
	}
	// Not stopped by a cleanup: cleanups also run after a panic in the
	// test's goroutine. It reaps itself once mnt is unmounted.
	go func() { _ = cmd.Wait() }()
}

// mountDevice is the major:minor of the file system mounted on mnt, from
// /proc/self/mountinfo: a stat of a mount whose server is stuck would hang.
func mountDevice(mnt string) (string, bool) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", false
	}
	dev := ""
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == mnt {
			dev = f[2] // the last mount on mnt is the one on top
		}
	}
	return dev, dev != ""
}

// hangNode is a root whose lookups never answer until release is closed.
type hangNode struct {
	fs.Inode
	release chan struct{}
}

func (n *hangNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	<-n.release
	return nil, syscall.ENOENT
}

// TestMountGuardChild is the process TestMountGuardEndsADeadServer runs:
// it mounts, guards the mount, stats a name whose lookup never answers,
// and panics meanwhile. Skipped unless that test runs it.
func TestMountGuardChild(t *testing.T) {
	mnt := os.Getenv("NIMBUS_GUARD_CHILD_MNT")
	if mnt == "" {
		t.Skip("run by TestMountGuardEndsADeadServer")
	}
	server, err := fs.Mount(mnt, &hangNode{release: make(chan struct{})}, &fs.Options{MountOptions: fuse.MountOptions{DirectMount: true}})
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("NIMBUS_GUARD_CHILD_UNGUARDED") == "" {
		guardMount(t, mnt)
	}
	go func() { _, _ = os.Stat(filepath.Join(mnt, "hang")) }()
	time.Sleep(300 * time.Millisecond)
	go func() { // as a background goroutine of the FS would
		panic("mount guard test: the server dies with a request of its own process in flight")
	}()
	time.Sleep(time.Minute)
	_ = server
}

// TestMountGuardEndsADeadServer: a test process that panics while one of
// its threads waits on its own mount exits, with its panic shown, instead
// of hanging go test; without the guard it does not exit.
func TestMountGuardEndsADeadServer(t *testing.T) {
	requireFUSE(t)
	for _, guarded := range []bool{true, false} {
		mnt := filepath.Join(t.TempDir(), "mnt")
		if err := os.Mkdir(mnt, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(os.Args[0], "-test.run", "^TestMountGuardChild$", "-test.v")
		cmd.Env = append(os.Environ(), "NIMBUS_GUARD_CHILD_MNT="+mnt)
		if !guarded {
			cmd.Env = append(cmd.Env, "NIMBUS_GUARD_CHILD_UNGUARDED=1")
		}
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		wait := 10 * time.Second // the guard acts within a second
		if !guarded {
			wait = 3 * time.Second
		}
		var err error
		select {
		case err = <-exited:
		case <-time.After(wait):
			// Stuck as described: end it the way the guard would.
			abortMount(t, mnt)
			err = <-exited
			if guarded {
				t.Fatalf("the guarded process was still stuck after %v (%v):\n%s", wait, err, out.String())
			}
			continue
		}
		if !guarded {
			t.Fatalf("the unguarded process exited (%v): the test proves nothing\n%s", err, out.String())
		}
		if err == nil || !strings.Contains(out.String(), "the server dies") {
			t.Fatalf("the guarded process exited with %v, output:\n%s\nwant its panic", err, out.String())
		}
	}
}

// abortMount aborts the FUSE connection of mnt, a mount this test made.
func abortMount(t *testing.T, mnt string) {
	t.Helper()
	dev, ok := mountDevice(mnt)
	if !ok {
		t.Errorf("abort %s: not mounted", mnt)
		return
	}
	_, minor, _ := strings.Cut(dev, ":")
	if err := os.WriteFile("/sys/fs/fuse/connections/"+minor+"/abort", []byte("1"), 0); err != nil {
		t.Errorf("abort the connection of %s: %v", mnt, err)
	}
	_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
}
