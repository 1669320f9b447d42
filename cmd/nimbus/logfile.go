package main

import (
	"fmt"
	"os"
	"strconv"
	"sync"
)

// logFile is a log file rotated at a size: when a write would take it past
// max bytes, PATH becomes PATH.1 (PATH.1 becomes PATH.2, and so on, keeping
// keep old files) and a new PATH starts. A few lines of its own rather than
// a library: rename and reopen is all rotation needs here.
type logFile struct {
	path string
	max  int64
	keep int

	mu   sync.Mutex
	f    *os.File // GUARDED_BY(mu)
	size int64    // GUARDED_BY(mu)
}

// Log rotation defaults: at most 4 × 10 MiB of logs per mount.
const (
	defaultLogMaxSize = 10 << 20
	logKeep           = 3
)

// openLogFile opens (appending to) the log at path, rotated at max bytes.
func openLogFile(path string, max int64) (*logFile, error) {
	l := &logFile{path: path, max: max, keep: logKeep}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *logFile) open() error {
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("log file: %w (check --log-file)", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("log file: %w", err)
	}
	l.f, l.size = f, st.Size()
	return nil
}

// Write appends p, rotating first if p would not fit. A line is never split
// between two files: slog writes one line per call.
func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.size > 0 && l.size+int64(len(p)) > l.max {
		if err := l.rotateLocked(); err != nil {
			// Keep logging to the current file rather than lose lines.
			fmt.Fprintf(l.f, "nimbus: log rotation failed: %v\n", err)
		}
	}
	n, err := l.f.Write(p)
	l.size += int64(n)
	return n, err
}

func (l *logFile) rotateLocked() error {
	for i := l.keep - 1; i >= 1; i-- {
		// A missing older file is the usual case, not an error.
		if err := os.Rename(l.path+"."+strconv.Itoa(i), l.path+"."+strconv.Itoa(i+1)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		return err
	}
	old := l.f
	if err := l.open(); err != nil {
		l.f = old
		return err
	}
	return old.Close()
}

// Close closes the current file.
func (l *logFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}
