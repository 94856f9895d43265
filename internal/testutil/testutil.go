// Package testutil holds fixtures shared by kiln's tests: the Debian guest
// kernel, fetched once per machine through the host's apt and cached, and
// small helpers such as root checks. It is imported only by _test files.
package testutil

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
)

// CacheDir is where fixtures are cached across test runs and packages:
// $KILN_TEST_CACHE, or /var/tmp/kiln-test-cache.
func CacheDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("KILN_TEST_CACHE")
	if dir == "" {
		dir = "/var/tmp/kiln-test-cache"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("test cache: %v", err)
	}
	return dir
}

// RequireRoot skips t unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// RequireCommand skips t unless name is on PATH.
func RequireCommand(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("needs %s on PATH", name)
	}
}

// WithLock runs fn holding an exclusive flock on name inside the cache dir,
// so concurrent test packages build each fixture once.
func WithLock(t testing.TB, name string, fn func() error) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(CacheDir(t), name+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("fixture lock: %v", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("fixture lock: %v", err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	if err := fn(); err != nil {
		t.Fatalf("fixture %s: %v", name, err)
	}
}

// DebianKernelDeb returns the path of the Debian linux-image .deb (the
// package linux-image-amd64 depends on), downloaded once with apt-get.
func DebianKernelDeb(t testing.TB) string {
	t.Helper()
	RequireCommand(t, "apt-get")
	dir := filepath.Join(CacheDir(t), "kernel-deb")
	var path string
	WithLock(t, "kernel-deb", func() error {
		if m, _ := filepath.Glob(filepath.Join(dir, "linux-image-*.deb")); len(m) == 1 {
			path = m[0]
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "apt-cache", "depends", "linux-image-amd64").CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-cache depends: %v: %s", err, out)
		}
		var pkg string
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
				pkg = f[1]
				break
			}
		}
		if pkg == "" {
			return fmt.Errorf("no linux-image dependency in: %s", out)
		}
		tmp := dir + ".tmp"
		os.RemoveAll(tmp)
		if err := os.MkdirAll(tmp, 0o755); err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", pkg)
		cmd.Dir = tmp
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get download %s: %v: %s", pkg, err, out)
		}
		os.RemoveAll(dir)
		if err := os.Rename(tmp, dir); err != nil {
			return err
		}
		m, _ := filepath.Glob(filepath.Join(dir, "linux-image-*.deb"))
		if len(m) != 1 {
			return fmt.Errorf("downloaded %v", m)
		}
		path = m[0]
		return nil
	})
	return path
}

// DebianKernel returns the vmlinuz and the modules directory
// (lib/modules/<release>) of the Debian kernel package, extracted once.
func DebianKernel(t testing.TB) (vmlinuz, modulesDir string) {
	t.Helper()
	deb := DebianKernelDeb(t)
	dir := filepath.Join(CacheDir(t), "kernel-x")
	WithLock(t, "kernel-x", func() error {
		if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
			return nil
		}
		os.RemoveAll(dir)
		if out, err := exec.Command("dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
			return fmt.Errorf("dpkg-deb -x: %v: %s", err, out)
		}
		return os.WriteFile(filepath.Join(dir, "done"), nil, 0o644)
	})
	vm, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	md, _ := filepath.Glob(filepath.Join(dir, "lib", "modules", "*"))
	if len(vm) != 1 || len(md) != 1 {
		t.Fatalf("kernel fixture: vmlinuz %v modules %v", vm, md)
	}
	return vm[0], md[0]
}

// WaitFor polls cond every interval until it returns true or the deadline
// passes, then fails t with what.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// OpenFDs counts this process's descriptors open on path (a deleted file
// included), so tests can show that nothing was left open.
func OpenFDs(t testing.TB, path string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.TrimSuffix(l, " (deleted)") == path {
			n++
		}
	}
	return n
}

// AppendFile appends s to the file at path, creating it (0600).
func AppendFile(t testing.TB, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

// GitSh runs a shell script (set -e) in dir with git's global and system
// configuration out of the way, failing the test with its output on error.
// It returns the trimmed output.
func GitSh(t testing.TB, dir, script string) string {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", "set -e\n"+script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_SYSTEM=/dev/null")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return strings.TrimSpace(string(out))
}
