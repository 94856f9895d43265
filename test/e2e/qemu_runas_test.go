package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/testutil"
)

// TestQEMURunAs restarts the shared daemon with qemu_uid/qemu_gid set to
// nobody:nogroup: each QEMU drops root once it has opened its disks,
// console, sockets and (user-mode) network; exec, stop/start, a daemon
// SIGKILL and restart, kill and delete all work on it, and delete leaves
// nothing behind. A half-set or negative user is refused with bad_request
// before the daemon starts.
func TestQEMURunAs(t *testing.T) {
	testutil.RequireRoot(t)
	h := setup(t)
	h.killDaemon(t, syscall.SIGTERM)
	t.Cleanup(func() {
		h.killDaemon(t, syscall.SIGTERM)
		if err := h.startDaemon(nil); err != nil {
			t.Errorf("restart the default daemon: %v", err)
		}
	})

	for _, bad := range [][]string{
		{"KILN_QEMU_UID=65534"},
		{"KILN_QEMU_UID=-1", "KILN_QEMU_GID=-1"},
	} {
		err := h.startDaemon(bad)
		h.killDaemon(t, syscall.SIGTERM)
		if err == nil || !strings.Contains(err.Error(), "bad_request: config: qemu_uid") {
			t.Fatalf("daemon with %q: %v, want a bad_request naming qemu_uid", bad, err)
		}
	}

	id := strconv.Itoa(jailUID)
	env := []string{"KILN_VMM=qemu", "KILN_QEMU_UID=" + id, "KILN_QEMU_GID=" + id,
		// User-mode networking: a NIC whose host side the unprivileged QEMU runs.
		"KILN_NETWORK=true", "KILN_NETWORK_MODE=user"}
	if err := h.startDaemon(env); err != nil {
		t.Fatal(err)
	}
	doctor := exec.Command(filepath.Join(h.bin, "kiln"), "--config", h.config, "doctor")
	doctor.Env = append(append([]string(nil), h.env...), env...)
	out, _ := doctor.CombinedOutput()
	if !bytes.Contains(out, []byte("qemu user")) || !bytes.Contains(out, []byte("QEMU runs as uid "+id)) {
		t.Errorf("kiln doctor does not say who QEMU runs as:\n%s", out)
	}

	vm := h.createVM(t, "rx")
	checkUser := func(pid int) {
		t.Helper()
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"Uid:\t" + id + "\t" + id + "\t" + id + "\t" + id, "Gid:\t" + id + "\t" + id + "\t" + id + "\t" + id} {
			if !strings.Contains(string(b), want+"\n") {
				t.Fatalf("VMM pid %d: /proc status lacks %q:\n%s", pid, want, b)
			}
		}
	}
	checkUser(vm.PID)
	r := h.kilnIn(t, strings.NewReader("unprivileged\n"), "vm", "exec", "rx", "--", "cat")
	if r.code != 0 || r.stdout != "unprivileged\n" {
		t.Fatalf("exec: %s", r)
	}
	if r := h.mustKiln(t, "vm", "exec", "rx", "--", "ip", "-4", "addr"); !strings.Contains(r.stdout, "10.0.2.15/24") {
		t.Errorf("guest has no user-mode address:\n%s", r.stdout)
	}

	// Stop (agent poweroff, then QMP power-down) keeps the data.
	started := h.stopStartKeepsData(t, "rx", vm.PID, func() {
		if by := stoppedBy(t, h, vm.PID); by != "guest" && by != "SIGTERM" {
			t.Errorf("QEMU pid %d stopped by %q, want the guest or SIGTERM", vm.PID, by)
		}
	})
	checkUser(started.PID)

	// A SIGKILLed daemon finds the unprivileged QEMU again.
	after := h.survivesDaemonKill(t, env, "rx", started.PID)

	// Root's SIGKILL ends it; delete leaves nothing.
	h.mustKiln(t, "vm", "kill", "rx")
	testutil.WaitFor(t, 10*time.Second, "VMM to be gone after kill", func() bool { return syscall.Kill(after.PID, 0) != nil })
	h.mustKiln(t, "vm", "delete", "rx")
	for _, d := range h.vmDirs(vm.ID) {
		if exists(d) {
			t.Errorf("delete left %s behind", d)
		}
	}
}

// stoppedBy is how the daemon's log says the VMM pid was stopped ("guest",
// "SIGTERM", "SIGKILL"; "" when it says nothing).
func stoppedBy(t *testing.T, h *harness, pid int) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.root, "daemon.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		var e struct {
			Msg string `json:"msg"`
			PID int    `json:"pid"`
			By  string `json:"by"`
		}
		if json.Unmarshal([]byte(l), &e) == nil && e.Msg == "qemu stopped" && e.PID == pid {
			return e.By
		}
	}
	return ""
}
