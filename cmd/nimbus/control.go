package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The control channel: the CLI sends one JSON request per connection on a
// unix socket that only the mount's owner can reach (0700 folder, 0600
// socket), and reads one JSON response. The CLI finds the socket of the
// mount holding any path through the user.nimbus.control xattr.

type controlRequest struct {
	Op      string        `json:"op"`
	Timeout time.Duration `json:"timeout,omitempty"` // sync
	Path    string        `json:"path,omitempty"`    // pin, unpin, free: absolute
	// Args are the arguments of the version commands (versions.go).
	Args json.RawMessage `json:"args,omitempty"`
}

type controlResponse struct {
	Error  string          `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
}

// runtimeDir is where control sockets live.
func runtimeDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "nimbus")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("nimbus-%d", os.Getuid()))
}

// controlSocketPath names the socket of the mount at mountpoint. The name is
// a hash: socket paths are limited to 108 bytes.
func controlSocketPath(mountpoint string) (string, error) {
	dir := runtimeDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("control socket folder %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", fmt.Errorf("control socket folder %s: %w", dir, err)
	}
	sum := sha256.Sum256([]byte(mountpoint))
	return filepath.Join(dir, hex.EncodeToString(sum[:8])+".sock"), nil
}

// controlListener serves control requests for one mount.
type controlListener struct {
	ln   net.Listener
	path string
}

func listenControl(path string, m *mountState) (*controlListener, error) {
	// A socket left by a killed daemon of this mountpoint is stale: the
	// mountpoint was free, so nothing serves it.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale control socket %s: %w", path, err)
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	c := &controlListener{ln: ln, path: path}
	go c.acceptLoop(m)
	return c, nil
}

func (c *controlListener) Close() {
	if err := c.ln.Close(); err != nil {
		slog.Debug("close control socket", "err", err)
	}
	if err := os.Remove(c.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		slog.Warn("remove control socket", "path", c.path, "err", err)
	}
}

func (c *controlListener) acceptLoop(m *mountState) {
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				m.log.Error("control socket accept", "err", err)
			}
			return
		}
		go m.handleControl(conn)
	}
}

func (m *mountState) handleControl(conn net.Conn) {
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(time.Minute)); err != nil {
		m.log.Debug("control deadline", "err", err)
	}
	var req controlRequest
	var resp controlResponse
	if err := json.NewDecoder(conn).Decode(&req); err != nil {
		resp.Error = "bad request: " + err.Error()
	} else {
		// A sync without a timeout waits as long as the uploads take.
		var deadline time.Time
		if req.Timeout > 0 {
			deadline = time.Now().Add(req.Timeout + time.Minute)
		}
		if req.Timeout > 0 || req.Op == "sync" {
			if err := conn.SetDeadline(deadline); err != nil {
				m.log.Debug("control deadline", "err", err)
			}
		}
		result, err := m.dispatch(req)
		if err != nil {
			// The CLI may show a line of it; the log keeps the whole.
			m.log.Info("control request failed", "op", req.Op, "path", req.Path, "err", err)
			resp.Error = err.Error()
		} else if resp.Result, err = json.Marshal(result); err != nil {
			resp.Error = err.Error()
		}
	}
	if err := json.NewEncoder(conn).Encode(resp); err != nil {
		m.log.Debug("control reply", "err", err)
	}
	if req.Op == "unmount" {
		select {
		case m.unmountReplied <- struct{}{}:
		default:
		}
	}
}

func (m *mountState) dispatch(req controlRequest) (any, error) {
	switch req.Op {
	case "status":
		return m.status()
	case "sync":
		return m.sync(req.Timeout)
	case "conflicts":
		return m.conflicts(), nil
	case "clear-conflicts":
		return m.clearConflicts(req.Args)
	case "pin":
		return m.pin(req.Path)
	case "unpin":
		return m.unpin(req.Path)
	case "free":
		return m.free(req.Path, false)
	case "free-unpin":
		return m.free(req.Path, true)
	case "pins":
		return m.fsys.PinStatus()
	case "unmount":
		return m.requestUnmount()
	}
	if result, ok, err := m.dispatchVersions(req); ok {
		return result, err
	}
	return nil, fmt.Errorf("unknown request %q (is this nimbus older than the CLI?)", req.Op)
}

// daemonError is an error the mount answered with (as opposed to not
// reaching it).
type daemonError struct{ msg string }

func (e daemonError) Error() string { return e.msg }

// callControl sends one request to the mount holding path.
func callControl(path, op string, result any) error {
	return callControlReq(path, controlRequest{Op: op}, result)
}

func callControlReq(path string, req controlRequest, result any) error {
	op := req.Op
	sock, err := findControlSocket(path)
	if err != nil {
		return err
	}
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return fmt.Errorf("the nimbus daemon of %s does not answer (%v): is it still running?", path, err)
	}
	defer conn.Close()
	deadline := time.Now().Add(2*time.Minute + req.Timeout)
	if req.Op == "sync" && req.Timeout == 0 {
		deadline = time.Time{} // until everything is uploaded
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return err
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return fmt.Errorf("send %s request: %w", op, err)
	}
	var resp controlResponse
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return fmt.Errorf("read %s reply: %w", op, err)
	}
	if resp.Error != "" {
		return daemonError{resp.Error}
	}
	if result != nil {
		return json.Unmarshal(resp.Result, result)
	}
	return nil
}

// errNotInMount: the path given to a command is on no nimbus mount.
var errNotInMount = errors.New("is not inside a nimbus mount")

// findControlSocket asks the mount holding path for its control socket.
func findControlSocket(path string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Getxattr(path, "user.nimbus.control", buf)
	if err != nil {
		if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) {
			return "", fmt.Errorf("%s %w", path, errNotInMount)
		}
		return "", fmt.Errorf("%s: %v (is the mount still alive?)", path, err)
	}
	return strings.TrimSpace(string(buf[:n])), nil
}
