// Package e2e holds kiln's end-to-end tests: they build the real binaries,
// run a real daemon on its own state directory and socket, and boot real
// VMs (QEMU; TCG on hosts without usable KVM) from a real Debian kernel and
// real ext4 images. Nothing here touches a system kiln daemon.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/api/client"
	"github.com/kilnvm/kiln/internal/testutil"
)

// harness is one daemon with its own directories, shared by the tests of
// this package (they run one after another).
type harness struct {
	root   string // short: Unix socket paths are limited to 107 bytes
	bin    string
	config string
	env    []string

	mu     sync.Mutex
	daemon *exec.Cmd
	logf   *os.File
}

var (
	setupOnce sync.Once
	shared    *harness
	setupErr  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		if shared.reportLockViolations() { // lockorder_test.go
			code = max(code, 1)
		}
		shared.teardown()
	}
	os.Exit(code)
}

// setup returns the shared harness, building it on first use. Fixtures
// (kernel package, busybox rootfs) are cached across runs by testutil.
func setup(t *testing.T) *harness {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireCommand(t, "qemu-system-x86_64")
	setupOnce.Do(func() {
		h, err := newHarness(t)
		if err != nil {
			setupErr = err.Error()
			return
		}
		shared = h
	})
	if setupErr != "" {
		t.Fatalf("e2e setup: %s", setupErr)
	}
	return shared
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	return strings.TrimSpace(string(out)), err
}

func newHarness(t *testing.T) (*harness, error) {
	deb := testutil.DebianKernelDeb(t)
	rootfs := testutil.BusyboxRootfsTar(t)
	root, err := os.MkdirTemp("/tmp", "kiln-e2e-")
	if err != nil {
		return nil, err
	}
	// World-readable, so tests can run the CLI as an unprivileged user.
	if err := os.Chmod(root, 0o755); err != nil {
		return nil, err
	}
	h := &harness{root: root, bin: filepath.Join(root, "bin"), config: filepath.Join(root, "config.toml")}
	shared = h // so TestMain tears down whatever got made, even on failure
	mod, err := moduleRoot()
	if err != nil {
		return nil, fmt.Errorf("find module root: %w", err)
	}
	for _, p := range []string{"kiln", "kiln-agent"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(h.bin, p), "./cmd/"+p)
		cmd.Dir = mod
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build %s: %v\n%s", p, err, out)
		}
	}
	if err := os.WriteFile(h.config, []byte("# e2e: everything comes from KILN_* below\n"), 0o644); err != nil {
		return nil, err
	}
	h.env = append(os.Environ(),
		"KILN_STATE_DIR="+filepath.Join(root, "state"),
		"KILN_RUN_DIR="+filepath.Join(root, "run"),
		"KILN_CACHE_DIR="+filepath.Join(root, "cache"),
		"KILN_DEFAULT_IMAGE=bb", "KILN_DEFAULT_KERNEL=test",
		"KILN_IMAGE_CATALOG="+filepath.Join(root, "catalog.json"), // image_autopull_test.go writes it
		"KILN_MEMORY_MIB=512", "KILN_VCPUS=2", "KILN_SOCKET_GROUP=",
		"KILN_BOOT_TIMEOUT=2m", "KILN_STOP_TIMEOUT=20s", "KILN_LOG_LEVEL=debug",
		"KILN_LOCKCHECK=1", // every lock inversion panics the daemon (internal/lockorder)
		"NO_COLOR=1",
		// The shared daemon runs in the host's network namespace: no bridge,
		// NAT or DNS there. Network tests start their own daemons inside
		// namespaces they create (network_test.go).
		"KILN_NETWORK=false",
	)
	if err := h.startDaemon(nil); err != nil {
		return nil, err
	}
	if r := h.kiln(t, "kernel", "import", "test", "--deb", deb); r.code != 0 {
		return nil, fmt.Errorf("kernel import: %s", r)
	}
	if r := h.kiln(t, "image", "import", "bb", "--rootfs-tar", rootfs, "--kernel", "test"); r.code != 0 {
		return nil, fmt.Errorf("image import: %s", r)
	}
	return h, nil
}

func (h *harness) socket() string { return filepath.Join(h.root, "run", "kiln.sock") }

func (h *harness) client() *client.Client { return client.New(h.socket()) }

// startDaemon runs `kiln daemon` in the background with extra environment.
func (h *harness) startDaemon(extraEnv []string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.daemon != nil {
		return fmt.Errorf("daemon already running")
	}
	logf, err := os.OpenFile(filepath.Join(h.root, "daemon.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(h.bin, "kiln"), "--config", h.config, "daemon")
	cmd.Env = append(append([]string(nil), h.env...), extraEnv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	h.daemon, h.logf = cmd, logf
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := h.client().Version(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("daemon exited at start; log:\n%s", h.daemonLog())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("daemon did not answer within 30s; log:\n%s", h.daemonLog())
}

// killDaemon ends the daemon with sig and waits until it is gone.
func (h *harness) killDaemon(t testing.TB, sig syscall.Signal) {
	t.Helper()
	h.mu.Lock()
	cmd := h.daemon
	h.daemon = nil
	h.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	testutil.WaitFor(t, 60*time.Second, "daemon to exit", func() bool {
		return syscall.Kill(cmd.Process.Pid, 0) != nil
	})
	if h.logf != nil {
		h.logf.Close()
	}
}

func (h *harness) daemonLog() string {
	b, _ := os.ReadFile(filepath.Join(h.root, "daemon.log"))
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return string(b)
}

// teardown deletes every VM, stops the daemon, kills any VMM left behind
// (a safety net that also reports the leak) and removes the directory.
func (h *harness) teardown() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if h.daemon != nil {
		if vms, err := h.client().ListVMs(ctx); err == nil {
			for _, v := range vms {
				_ = h.client().DeleteVM(ctx, v.Name)
			}
		}
		_ = h.daemon.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() {
			for syscall.Kill(h.daemon.Process.Pid, 0) == nil {
				time.Sleep(50 * time.Millisecond)
			}
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			_ = h.daemon.Process.Kill()
		}
	}
	for _, pid := range vmmPIDs(h.root) {
		fmt.Fprintf(os.Stderr, "e2e teardown: killing leaked VMM pid %d\n", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	_ = os.RemoveAll(h.root)
}

// vmmPIDs finds processes whose command line mentions dir: the VMMs of
// this harness.
func vmmPIDs(dir string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmd := string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		if strings.Contains(cmd, "qemu-system") && strings.Contains(cmd, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// result is a finished CLI invocation.
type result struct {
	args           []string
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("kiln %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// kiln runs the CLI with the harness's environment.
func (h *harness) kiln(t testing.TB, args ...string) result {
	t.Helper()
	return h.kilnIn(t, nil, args...)
}

func (h *harness) kilnIn(t testing.TB, stdin io.Reader, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(h.bin, "kiln"), append([]string{"--config", h.config}, args...)...)
	cmd.Env = h.env
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{args: args, stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("kiln %v: %v", args, err)
	}
	return r
}

// mustKiln runs the CLI and fails the test unless it exits 0.
func (h *harness) mustKiln(t testing.TB, args ...string) result {
	t.Helper()
	r := h.kiln(t, args...)
	if r.code != 0 {
		t.Fatalf("%s\ndaemon log tail:\n%s", r, h.daemonLog())
	}
	return r
}

// createVM boots a VM and deletes it when the test ends.
func (h *harness) createVM(t *testing.T, name string, extra ...string) api.VM {
	t.Helper()
	h.mustKiln(t, append([]string{"vm", "create", "--name", name}, extra...)...)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = h.client().DeleteVM(ctx, name)
	})
	vm, err := h.client().GetVM(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

// stopStartKeepsData writes a file in VM name, stops it (its VMM, pid,
// must go), runs whileStopped, starts it again and checks the file is
// still there. It returns the VM as started.
func (h *harness) stopStartKeepsData(t *testing.T, name string, pid int, whileStopped func()) api.VM {
	t.Helper()
	h.mustKiln(t, "vm", "exec", name, "--", "sh", "-c", "echo kept > /root/mark")
	h.mustKiln(t, "vm", "stop", name)
	if got, err := h.client().GetVM(context.Background(), name); err != nil || got.State != api.StateStopped {
		t.Fatalf("after stop: %+v %v", got, err)
	}
	testutil.WaitFor(t, 10*time.Second, "VMM to be gone", func() bool { return syscall.Kill(pid, 0) != nil })
	if whileStopped != nil {
		whileStopped()
	}
	h.mustKiln(t, "vm", "start", name)
	started, err := h.client().GetVM(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	if r := h.mustKiln(t, "vm", "exec", name, "--", "cat", "/root/mark"); strings.TrimSpace(r.stdout) != "kept" {
		t.Fatalf("data lost over stop/start: %s", r)
	}
	return started
}

// survivesDaemonKill SIGKILLs the daemon, starts it again with env, and
// checks that VM name still runs on the same VMM pid and answers exec. It
// returns the VM as the new daemon sees it.
func (h *harness) survivesDaemonKill(t *testing.T, env []string, name string, pid int) api.VM {
	t.Helper()
	h.killDaemon(t, syscall.SIGKILL)
	if syscall.Kill(pid, 0) != nil {
		t.Fatalf("VMM pid %d died with the daemon", pid)
	}
	if err := h.startDaemon(env); err != nil {
		t.Fatal(err)
	}
	got, err := h.client().GetVM(context.Background(), name)
	if err != nil || got.State != api.StateRunning || got.PID != pid {
		t.Fatalf("after daemon restart: %+v %v (before pid %d)", got, err, pid)
	}
	if r := h.mustKiln(t, "vm", "exec", name, "--", "echo", "still here"); strings.TrimSpace(r.stdout) != "still here" {
		t.Fatalf("exec after restart: %s", r)
	}
	return got
}

// vmDirs are a VM's durable and runtime directories.
func (h *harness) vmDirs(id string) []string {
	return []string{filepath.Join(h.root, "state", "vms", id), filepath.Join(h.root, "run", "vm", id)}
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
