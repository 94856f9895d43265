package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/testutil"
)

// TestVMMSelectPerVM runs a QEMU VM and a Firecracker VM (fcemu, or
// $KILN_E2E_FIRECRACKER) side by side on one daemon: bad --vmm values
// change nothing, both VMs exec, both survive a daemon restart, a daemon
// without Firecracker leaves the Firecracker VM alone and refuses to
// manage it, and delete removes both.
func TestVMMSelectPerVM(t *testing.T) {
	h := setup(t)
	both := []string{"KILN_VMM=qemu", "KILN_FIRECRACKER_BINARY=" + firecrackerBinary(t, h)}
	noFC := []string{"KILN_VMM=qemu", "KILN_FIRECRACKER_BINARY=" + filepath.Join(t.TempDir(), "no-firecracker")}
	restart := func(t testing.TB, sig syscall.Signal, env []string) int {
		t.Helper()
		h.killDaemon(t, sig)
		logStart := 0
		if st, err := os.Stat(filepath.Join(h.root, "daemon.log")); err == nil {
			logStart = int(st.Size())
		}
		if err := h.startDaemon(env); err != nil {
			t.Fatal(err)
		}
		return logStart
	}
	t.Cleanup(func() { // runs last: the default daemon again
		h.killDaemon(t, syscall.SIGTERM)
		if err := h.startDaemon(nil); err != nil {
			t.Errorf("restart the default daemon: %v", err)
		}
	})
	restart(t, syscall.SIGTERM, both)
	t.Cleanup(func() { // a daemon that has both drivers deletes both VMs
		restart(t, syscall.SIGTERM, both)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		for _, name := range []string{"sel-q", "sel-fc"} {
			if err := h.client().DeleteVM(ctx, name); err != nil && !errors.Is(err, api.ErrNotFound) {
				t.Errorf("delete %s: %v", name, err)
			}
		}
	})

	// Bad input: a clear error, and no VM.
	r := h.kiln(t, "vm", "create", "--name", "sel-bad", "--vmm", "kvmtool")
	if r.code == 0 || !strings.Contains(r.stderr, `unknown vmm "kvmtool"`) {
		t.Fatalf("unknown --vmm: %s", r)
	}
	if _, err := h.client().GetVM(context.Background(), "sel-bad"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("a refused create left a VM: %v", err)
	}

	h.mustKiln(t, "vm", "create", "--name", "sel-q", "--vmm", "qemu")
	h.mustKiln(t, "vm", "create", "--name", "sel-fc", "--vmm", "firecracker")
	vms := map[string]api.VM{}
	for name, want := range map[string]string{"sel-q": "qemu", "sel-fc": "firecracker"} {
		v, err := h.client().GetVM(context.Background(), name)
		if err != nil || v.Driver != want || v.State != api.StateRunning {
			t.Fatalf("%s: %+v, %v; want driver %s, running", name, v, err, want)
		}
		vms[name] = v
		r := h.kilnIn(t, strings.NewReader(name+"\n"), "vm", "exec", name, "--", "cat")
		if r.code != 0 || r.stdout != name+"\n" {
			t.Fatalf("exec in %s: %s", name, r)
		}
	}
	if !exists(filepath.Join(h.root, "run", "vm", vms["sel-fc"].ID, "firecracker.sock")) {
		t.Errorf("sel-fc has no firecracker API socket")
	}
	if exists(filepath.Join(h.root, "run", "vm", vms["sel-q"].ID, "firecracker.sock")) {
		t.Errorf("sel-q has a firecracker API socket")
	}

	// Both survive a daemon SIGKILL, each found by its own driver.
	restart(t, syscall.SIGKILL, both)
	for name, before := range vms {
		v, err := h.client().GetVM(context.Background(), name)
		if err != nil || v.State != api.StateRunning || v.PID != before.PID {
			t.Fatalf("%s after restart: %+v, %v (pid before %d)", name, v, err, before.PID)
		}
		r := h.mustKiln(t, "vm", "exec", name, "--", "echo", "still "+name)
		if strings.TrimSpace(r.stdout) != "still "+name {
			t.Fatalf("exec in %s after restart: %s", name, r)
		}
	}

	// A daemon without Firecracker leaves sel-fc running and alone, and
	// says why it will not manage it.
	logStart := restart(t, syscall.SIGTERM, noFC)
	b, _ := os.ReadFile(filepath.Join(h.root, "daemon.log"))
	if log := string(b[min(logStart, len(b)):]); !strings.Contains(log, "reconcile: leaving vm alone") || !strings.Contains(log, "sel-fc") {
		t.Errorf("reconcile did not say it left sel-fc alone:\n%s", log)
	}
	if syscall.Kill(vms["sel-fc"].PID, 0) != nil {
		t.Fatalf("the firecracker VMM of sel-fc died under a daemon without firecracker")
	}
	if v, err := h.client().GetVM(context.Background(), "sel-fc"); err != nil || v.State != api.StateRunning {
		t.Fatalf("sel-fc under a daemon without firecracker: %+v, %v", v, err)
	}
	for _, action := range []string{"stop", "delete"} {
		r := h.kiln(t, "vm", action, "sel-fc")
		if r.code == 0 || !strings.Contains(r.stderr, "firecracker VMM, which is not usable on this daemon") {
			t.Errorf("%s of sel-fc without firecracker: %s", action, r)
		}
	}
	r = h.kiln(t, "vm", "create", "--name", "sel-bad", "--vmm", "firecracker")
	if r.code == 0 || !strings.Contains(r.stderr, `vmm "firecracker" is not usable on this daemon`) || !strings.Contains(r.stderr, "no-firecracker") {
		t.Errorf("--vmm firecracker without firecracker: %s", r)
	}
	if _, err := h.client().GetVM(context.Background(), "sel-bad"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("a refused create left a VM: %v", err)
	}
	h.mustKiln(t, "vm", "exec", "sel-q", "--", "true")

	// Back with both drivers: sel-fc is managed again; delete both.
	restart(t, syscall.SIGTERM, both)
	h.mustKiln(t, "vm", "exec", "sel-fc", "--", "true")
	h.mustKiln(t, "vm", "delete", "sel-q", "sel-fc")
	for name, v := range vms {
		testutil.WaitFor(t, 10*time.Second, name+" VMM to be gone", func() bool { return syscall.Kill(v.PID, 0) != nil })
		for _, d := range h.vmDirs(v.ID) {
			if exists(d) {
				t.Errorf("delete of %s left %s behind", name, d)
			}
		}
	}
}
