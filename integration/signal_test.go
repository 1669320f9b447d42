package integration

import (
	"errors"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestChangesSurviveSignals: a signal to a program in the middle of a
// change on the mount must not fail the change with EINTR. Go programs get
// SIGURG all the time (preemption), and the kernel turns any signal into a
// FUSE interrupt. The change here is a touch of a file that is not cached,
// which fetches it; MinIO is paused meanwhile so that the signals arrive
// while the fetch is in flight.
func TestChangesSurviveSignals(t *testing.T) {
	e := newEnv(t)
	e.put("dir/big.bin", make([]byte, 3<<20))
	m := e.mount(mountOpt{})
	if _, err := os.Stat(m.path("dir/big.bin")); err != nil { // listed while MinIO runs
		t.Fatal(err)
	}

	// A handled signal: the kernel interrupts the request, the program
	// lives on (as with SIGURG).
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs, syscall.SIGUSR1)
	defer signal.Stop(sigs)

	e.minio.Pause()
	resumed := false
	defer func() {
		if !resumed {
			e.minio.Resume()
		}
	}()
	tids := make(chan int, 1)
	done := make(chan error, 1)
	mtime := time.Date(2003, 3, 3, 3, 3, 3, 0, time.UTC)
	go func() {
		runtime.LockOSThread() // the signals go to this thread
		tids <- unix.Gettid()
		done <- os.Chtimes(m.path("dir/big.bin"), mtime, mtime)
	}()
	tid := <-tids
	select {
	case err := <-done:
		t.Fatalf("the touch returned while MinIO was paused: %v", err)
	case <-time.After(300 * time.Millisecond): // the touch is waiting for MinIO
	}
	for range 5 {
		select {
		case err := <-done:
			t.Fatalf("the touch returned while MinIO was paused, after a signal: %v", err)
		default:
		}
		if err := unix.Tgkill(os.Getpid(), tid, syscall.SIGUSR1); err != nil {
			t.Fatalf("signal the touching thread: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.minio.Resume()
	resumed = true
	select {
	case err := <-done:
		if errors.Is(err, syscall.EINTR) {
			t.Fatalf("touch interrupted by a signal: %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("touch still running 1 min after MinIO resumed")
	}
	st, err := os.Stat(m.path("dir/big.bin"))
	if err != nil || !st.ModTime().Equal(mtime) {
		t.Fatalf("after the touch: %v %v, want mtime %v", st, err, mtime)
	}
}
