package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/testutil"
)

// useFirecracker restarts the shared daemon with the Firecracker driver
// (and extra settings) and restores the default daemon when the test
// ends. The binary is $KILN_E2E_FIRECRACKER (a real Firecracker, on a KVM
// host) or else the test-only API emulator (fcemu), built here, which
// boots with QEMU.
func useFirecracker(t *testing.T, h *harness, extra ...string) []string {
	t.Helper()
	env := append([]string{"KILN_VMM=firecracker", "KILN_FIRECRACKER_BINARY=" + firecrackerBinary(t, h)}, extra...)
	h.killDaemon(t, syscall.SIGTERM)
	t.Cleanup(func() {
		h.killDaemon(t, syscall.SIGTERM)
		if err := h.startDaemon(nil); err != nil {
			t.Errorf("restart the default daemon: %v", err)
		}
	})
	if err := h.startDaemon(env); err != nil {
		t.Fatal(err)
	}
	return env
}

// firecrackerBinary is $KILN_E2E_FIRECRACKER (a real Firecracker, on a
// KVM host) or else the test-only API emulator (fcemu), built here.
func firecrackerBinary(t *testing.T, h *harness) string {
	t.Helper()
	if bin := os.Getenv("KILN_E2E_FIRECRACKER"); bin != "" {
		return bin
	}
	// jailer execs only files whose name contains "firecracker".
	return goBuild(t, "./internal/vmm/firecracker/fcemu/cmd/fcemu", filepath.Join(h.bin, "firecracker-fcemu"))
}

// goBuild builds the static binary of a main package of this module.
func goBuild(t *testing.T, pkg, out string) string {
	t.Helper()
	mod, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// TestFirecrackerLifecycle runs the lifecycle through the Firecracker
// driver: create, exec, ssh, stop, start, daemon restart, delete.
func TestFirecrackerLifecycle(t *testing.T) {
	h := setup(t)
	env := useFirecracker(t, h)
	if !strings.Contains(h.daemonLog(), "vmm: firecracker (configured)") {
		t.Fatalf("daemon did not pick firecracker:\n%s", h.daemonLog())
	}
	vm := h.createVM(t, "fc")
	runDir := filepath.Join(h.root, "run", "vm", vm.ID)
	var hd struct {
		Driver, Channel string
	}
	b, err := os.ReadFile(filepath.Join(h.root, "state", "vms", vm.ID, "handles.json"))
	if err == nil {
		err = json.Unmarshal(b, &hd)
	}
	if err != nil || hd.Driver != "firecracker" || hd.Channel != "hybrid-vsock" {
		t.Fatalf("handle = %+v, %v (%s)", hd, err, b)
	}
	if !exists(filepath.Join(runDir, "vsock.sock")) || !exists(filepath.Join(runDir, "firecracker.sock")) {
		t.Fatalf("no firecracker sockets in %s", runDir)
	}
	if os.Getenv("KILN_E2E_FIRECRACKER") == "" {
		// fcemu emulates 1.16.1, which boots an ELF vmlinux only: the
		// daemon extracted one from the Debian bzImage, and it booted.
		vmlinux := filepath.Join(h.root, "state", "kernels", "test", "vmlinux")
		if b, err := os.ReadFile(vmlinux); err != nil || !strings.HasPrefix(string(b[:min(len(b), 4)]), "\x7fELF") {
			t.Errorf("no ELF vmlinux extracted at %s: %v", vmlinux, err)
		}
		if log, _ := os.ReadFile(filepath.Join(h.root, "daemon.log")); !strings.Contains(string(log), "booting the extracted ELF vmlinux") {
			t.Errorf("the daemon did not say it booted the extracted vmlinux")
		}
	}

	// exec and ssh go over hybrid vsock.
	r := h.kilnIn(t, strings.NewReader("over vsock\n"), "vm", "exec", "fc", "--", "cat")
	if r.code != 0 || r.stdout != "over vsock\n" {
		t.Fatalf("exec: %s", r)
	}
	if r := h.kiln(t, "vm", "exec", "fc", "--", "sh", "-c", "exit 4"); r.code != 4 {
		t.Fatalf("exit code: %s", r)
	}
	r = h.mustKiln(t, "vm", "ssh", "fc", "--", "echo", "ssh ok")
	if strings.TrimSpace(r.stdout) != "ssh ok" {
		t.Fatalf("ssh: %s", r)
	}

	// A clean stop keeps data; start boots a new VMM.
	before := h.stopStartKeepsData(t, "fc", vm.PID, nil)

	// The VM survives a daemon SIGKILL and is reached again after restart.
	after := h.survivesDaemonKill(t, env, "fc", before.PID)

	// Delete leaves no process or directory behind.
	h.mustKiln(t, "vm", "delete", "fc")
	testutil.WaitFor(t, 10*time.Second, "VMM to be gone", func() bool { return syscall.Kill(after.PID, 0) != nil })
	for _, d := range h.vmDirs(vm.ID) {
		if exists(d) {
			t.Errorf("delete left %s behind", d)
		}
	}
	if pids := vmmPIDs(runDir); len(pids) > 0 {
		t.Errorf("delete left processes %v", pids)
	}
}
