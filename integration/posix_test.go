package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPOSIXTools copies a tree that holds private folders, a mode-0 file,
// an executable, set mtimes and relative, absolute and dangling symlinks
// into a mount over MinIO with cp -a, tar and rsync -a, clones a git
// repository with a symlink and an executable bit, and then checks that
// another mount with an empty cache shows exactly the same trees.
func TestPOSIXTools(t *testing.T) {
	for _, tool := range []string{"rsync", "git", "tar", "cp", "find", "diff"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is needed (Debian package %s): %v", tool, tool, err)
			}
			t.Skipf("%s is not installed (Debian package %s)", tool, tool)
		}
	}
	defer syscall.Umask(syscall.Umask(0o022))
	src := filepath.Join(t.TempDir(), "src")
	makePOSIXTree(t, src)
	repo := makeRepo(t)

	e := newEnv(t)
	m := e.mount(mountOpt{})
	sh := func(dir, script string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "sh", "-ec", script)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+t.TempDir())
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s (in %s): %v\n%s", script, dir, err, out)
		}
	}
	sh(m.dir, "cp -a "+src+" cp")
	sh(m.dir, "mkdir tar && (cd "+src+" && tar cpf - .) | (cd tar && tar xpf -)")
	sh(m.dir, "rsync -a "+src+"/ rsync/")
	sh(m.dir, "git clone -q "+repo+" clone")
	statusOf := func(dir string) string {
		t.Helper()
		cmd := exec.Command("git", "-C", dir, "status", "--porcelain")
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git status in %s: %v\n%s", dir, err, out)
		}
		return string(out)
	}
	if st := statusOf(m.path("clone")); st != "" {
		t.Errorf("git status after clone is not clean:\n%s", st)
	}
	sh(m.path("clone"), "git fsck --strict --no-progress")
	sh(m.dir, "tar cpf /dev/null tar") // reading the links and specials back

	run(t, 2*time.Minute, nimbusBin, "sync", m.dir)
	other := e.mount(mountOpt{})
	want := findTree(t, src)
	for _, line := range []string{". d 755 1500003000 ", "./private d 700 1500002000 ", "./group d 750 1500001000 ",
		"./private/secret f 0 1000000000 ", "./private/run.sh f 755 1100000000 ", "./abs-link l 777 ",
		" /etc/hostname", " no/such/target", " ../notes.txt"} {
		if !strings.Contains(want, line) {
			t.Fatalf("the source tree lacks %q: the comparison would prove little\n%s", line, want)
		}
	}
	for _, copyName := range []string{"cp", "tar", "rsync"} {
		for _, mnt := range []*mount{m, other} {
			if got := findTree(t, mnt.path(copyName)); got != want {
				t.Errorf("%s on %s differs from the source:\n%s", copyName, mnt.dir, lineDiff(want, got))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		out, err := exec.CommandContext(ctx, "diff", "-r", "--no-dereference", src, other.path(copyName)).CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("diff -r --no-dereference %s: %v\n%s", copyName, err, out)
		}
	}
	if st := statusOf(other.path("clone")); st != "" {
		t.Errorf("git status on another mount is not clean:\n%s", st)
	}
	sh(other.path("clone"), "git fsck --strict --no-progress")
	if want, got := findTree(t, repo), findTree(t, other.path("clone")); stripGitDir(want) != stripGitDir(got) {
		t.Errorf("the clone's work tree differs:\n%s", lineDiff(stripGitDir(want), stripGitDir(got)))
	}
	if out := run(t, time.Minute, "getconf", "NAME_MAX", m.dir); strings.TrimSpace(string(out)) != "255" {
		t.Errorf("getconf NAME_MAX on the mount = %q, want 255", out)
	}
}

// makePOSIXTree builds the tree the tools copy.
func makePOSIXTree(t *testing.T, root string) {
	t.Helper()
	mk := func(rel string) {
		if err := os.Mkdir(filepath.Join(root, rel), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	file := func(rel, content string, mode os.FileMode, mtime int64) {
		p := filepath.Join(root, rel)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		tm := time.Unix(mtime, 0)
		if err := os.Chtimes(p, tm, tm); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, rel string) {
		if err := os.Symlink(target, filepath.Join(root, rel)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	mk("private")
	mk("group")
	mk("group/deep")
	file("private/secret", "nobody may read this\n", 0, 1000000000)
	file("private/run.sh", "#!/bin/sh\necho hi\n", 0o755, 1100000000)
	file("group/notes.txt", "notes\n", 0o640, 1200000000)
	file("group/deep/data.bin", strings.Repeat("\x00\x01binary", 1000), 0o644, 1300000000)
	file("empty", "", 0o444, 1400000000)
	link("group/notes.txt", "rel-link")
	link("../notes.txt", "group/deep/up-link")
	link("/etc/hostname", "abs-link")
	link("no/such/target", "dangling-link")
	// Folder modes and times last: writing inside changes them.
	for rel, mode := range map[string]os.FileMode{"private": 0o700, "group": 0o750, "group/deep": 0o755} {
		p := filepath.Join(root, rel)
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	for i, rel := range []string{"group/deep", "group", "private", "."} {
		tm := time.Unix(int64(1500000000+i*1000), 0)
		if err := os.Chtimes(filepath.Join(root, rel), tm, tm); err != nil {
			t.Fatal(err)
		}
	}
}

// makeRepo makes a git repository with a symlink and an executable.
func makeRepo(t *testing.T) string {
	t.Helper()
	repo := filepath.Join(t.TempDir(), "repo")
	script := `
git init -q repo
cd repo
printf '#!/bin/sh\necho build\n' > build.sh && chmod 755 build.sh
printf 'hello\n' > README
mkdir -p docs && printf 'doc\n' > docs/index.md
ln -s docs/index.md index-link
ln -s README.missing dangling
git add -A
git -c user.name=t -c user.email=t@example.invalid commit -q -m init
`
	cmd := exec.Command("sh", "-ec", script)
	cmd.Dir = filepath.Dir(repo)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "GIT_CONFIG_NOSYSTEM=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make repo: %v\n%s", err, out)
	}
	return repo
}

// findTree lists a tree as find -printf '%p %y %m %Ts %l', sorted.
func findTree(t *testing.T, dir string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "find", ".", "-printf", `%p %y %m %Ts %l\n`)
	cmd.Dir = dir
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("find in %s: %v: %s", dir, err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// stripGitDir drops .git and the mtimes (git sets none) from a findTree
// listing.
func stripGitDir(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		if len(f) < 4 || f[0] == "./.git" || strings.HasPrefix(f[0], "./.git/") || f[0] == "." {
			continue
		}
		f[3] = "-"
		keep = append(keep, strings.Join(f, " "))
	}
	return strings.Join(keep, "\n")
}

// lineDiff shows the lines only in want (-) and only in got (+).
func lineDiff(want, got string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	w, g := in(want), in(got)
	var b strings.Builder
	for _, l := range strings.Split(want, "\n") {
		if !g[l] {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range strings.Split(got, "\n") {
		if !w[l] {
			b.WriteString("+ " + l + "\n")
		}
	}
	return b.String()
}

// TestAllowOtherEnforcesModes mounts with --allow-other, which implies
// default_permissions: the kernel checks the stored modes and owners for
// other users, so user nobody can neither write into root's 0755 folder
// nor read root's 0600 file, and can read a 0644 one.
func TestAllowOtherEnforcesModes(t *testing.T) {
	requireRoot(t, "acting as another user")
	e := newEnv(t)
	m := e.mount(mountOpt{args: []string{"--allow-other"}})
	if err := os.Mkdir(m.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m.path("d/secret"), []byte("root only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m.path("d/public"), []byte("anyone\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// 65534 is nobody on Debian.
	asNobody := func(script string) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "sh", "-c", script)
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		return cmd.Run()
	}
	// The test's temporary folders above the mount are 0700: nobody could
	// not reach the mount at all. Open the path to it for the test.
	for dir := filepath.Dir(m.dir); dir != "/" && dir != "."; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(dir, fi.Mode().Perm()|0o001); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.Chmod(dir, fi.Mode().Perm()) }) // the folder goes with the test anyway
		}
	}
	if err := asNobody("cat " + m.path("d/public") + " >/dev/null"); err != nil {
		t.Fatalf("nobody cannot read a 0644 file: %v (the test proves nothing)", err)
	}
	if err := asNobody("touch " + m.path("d/intruder")); err == nil {
		t.Error("nobody created a file in root's 0755 folder")
	}
	if err := asNobody("cat " + m.path("d/secret")); err == nil {
		t.Error("nobody read root's 0600 file")
	}
}
