package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/testutil"
)

func TestRunPropagatesExitCodeAndRemovesVM(t *testing.T) {
	h := setup(t)
	r := h.kiln(t, "vm", "run", "--rm", "--name", "exit7", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
	if r.code != 7 {
		t.Fatalf("want exit 7: %s\ndaemon log:\n%s", r, h.daemonLog())
	}
	if !strings.Contains(r.stdout, "out") || !strings.Contains(r.stderr, "err") {
		t.Fatalf("stdout/stderr not streamed separately: %s", r)
	}
	if _, err := h.client().GetVM(context.Background(), "exit7"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("--rm left the VM behind: %v", err)
	}
}

func TestGuestRunsItsOwnKernel(t *testing.T) {
	h := setup(t)
	h.createVM(t, "kern")
	r := h.mustKiln(t, "vm", "exec", "kern", "--", "uname", "-r")
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	guest := strings.TrimSpace(r.stdout)
	if guest == "" || guest == strings.TrimSpace(string(host)) {
		t.Fatalf("guest kernel %q should be the imported one, not the host's %q", guest, host)
	}
	k, err := h.client().GetKernel(context.Background(), "test")
	if err != nil || k.Release != guest {
		t.Fatalf("guest runs %q, kernel %q has release %q (%v)", guest, "test", k.Release, err)
	}
}

func TestExecStreamsStdinAndExitCodes(t *testing.T) {
	h := setup(t)
	h.createVM(t, "box")
	r := h.kilnIn(t, strings.NewReader("hi\nthere\n"), "vm", "exec", "box", "--", "cat")
	if r.code != 0 || r.stdout != "hi\nthere\n" {
		t.Fatalf("stdin did not reach the guest: %s", r)
	}
	if r := h.kiln(t, "vm", "exec", "box", "--", "sh", "-c", "exit 3"); r.code != 3 {
		t.Fatalf("exit code not propagated: %s", r)
	}
	if r := h.kiln(t, "vm", "exec", "box", "--", "no-such-command"); r.code != 127 {
		t.Fatalf("missing command: want 127: %s", r)
	}
	// A binary-safe round trip of 1 MiB through stdin and stdout.
	data := bytes.Repeat([]byte{0, 1, 2, 250, '\n', 'x'}, 1<<18/6*4)
	r = h.kilnIn(t, bytes.NewReader(data), "vm", "exec", "box", "--", "cat")
	if r.code != 0 || r.stdout != string(data) {
		t.Fatalf("binary round trip: exit %d, got %d bytes want %d", r.code, len(r.stdout), len(data))
	}
}

func TestStopStartKeepsDiskData(t *testing.T) {
	h := setup(t)
	h.createVM(t, "persist")
	h.mustKiln(t, "vm", "exec", "persist", "--", "sh", "-c", "echo kept > /root/mark")
	h.mustKiln(t, "vm", "stop", "persist")
	vm, err := h.client().GetVM(context.Background(), "persist")
	if err != nil || vm.State != api.StateStopped {
		t.Fatalf("after stop: %+v %v", vm, err)
	}
	if r := h.kiln(t, "vm", "exec", "persist", "--", "true"); r.code != api.ClassFailedPrecondition.ExitCode() {
		t.Fatalf("exec in a stopped VM: want failed_precondition: %s", r)
	}
	h.mustKiln(t, "vm", "start", "persist")
	r := h.mustKiln(t, "vm", "exec", "persist", "--", "cat", "/root/mark")
	if strings.TrimSpace(r.stdout) != "kept" {
		t.Fatalf("data written before a clean stop was lost: %s", r)
	}
}

func TestVMSurvivesDaemonSIGKILL(t *testing.T) {
	h := setup(t)
	vm := h.createVM(t, "survivor")
	h.survivesDaemonKill(t, nil, "survivor", vm.PID)
}

func TestDeleteLeavesNothingBehind(t *testing.T) {
	h := setup(t)
	vm := h.createVM(t, "gone")
	if vm.PID == 0 || syscall.Kill(vm.PID, 0) != nil {
		t.Fatalf("no live VMM for a running VM: %+v", vm)
	}
	h.mustKiln(t, "vm", "delete", "gone")
	testutil.WaitFor(t, 10*time.Second, "VMM process to be gone", func() bool { return syscall.Kill(vm.PID, 0) != nil })
	for _, d := range h.vmDirs(vm.ID) {
		if exists(d) {
			t.Errorf("delete left %s behind", d)
		}
	}
	if pids := vmmPIDs(filepath.Join(h.root, "run", "vm", vm.ID)); len(pids) > 0 {
		t.Errorf("delete left VMM processes %v", pids)
	}
	if _, err := h.client().GetVM(context.Background(), "gone"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("record still there: %v", err)
	}
}

func TestTakenNameFailsAndChangesNothing(t *testing.T) {
	h := setup(t)
	first := h.createVM(t, "taken")
	r := h.kiln(t, "vm", "create", "--name", "taken")
	if r.code != api.ClassAlreadyExists.ExitCode() || !strings.Contains(r.stderr, "already_exists") {
		t.Fatalf("second create with a taken name: %s", r)
	}
	vms, err := h.client().ListVMs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, v := range vms {
		if v.Name == "taken" {
			n++
			if v.ID != first.ID || v.State != api.StateRunning {
				t.Fatalf("the first VM changed: %+v", v)
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d VMs named taken", n)
	}
}

func TestBadInputGetsClearErrors(t *testing.T) {
	h := setup(t)
	evil := filepath.Join(t.TempDir(), "evil.tar")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "../../etc/evil", Mode: 0o644, Size: 4, Typeflag: tar.TypeReg})
	tw.Write([]byte("evil"))
	tw.Close()
	os.WriteFile(evil, buf.Bytes(), 0o644)

	cases := []struct {
		name  string
		args  []string
		class api.Class
		want  string
	}{
		{"uppercase vm name", []string{"vm", "create", "--name", "Bad"}, api.ClassBadRequest, "invalid VM name"},
		{"vm name with slash", []string{"vm", "create", "--name", "a/b"}, api.ClassBadRequest, "invalid VM name"},
		{"too long vm name", []string{"vm", "create", "--name", strings.Repeat("a", 64)}, api.ClassBadRequest, "invalid VM name"},
		{"unknown image", []string{"vm", "create", "--name", "x1", "--image", "nope"}, api.ClassNotFound, `image "nope"`},
		{"unknown kernel", []string{"vm", "create", "--name", "x2", "--kernel", "nope"}, api.ClassNotFound, `kernel "nope"`},
		{"unknown vm", []string{"vm", "exec", "nope", "--", "true"}, api.ClassNotFound, `vm "nope"`},
		{"missing deb", []string{"kernel", "import", "k2", "--deb", "/nonexistent.deb"}, api.ClassBadRequest, "/nonexistent.deb"},
		{"missing tarball", []string{"image", "import", "i2", "--rootfs-tar", "/nonexistent.tar"}, api.ClassBadRequest, "/nonexistent.tar"},
		{"tarball with ..", []string{"image", "import", "evil", "--rootfs-tar", evil}, api.ClassBadRequest, ".."},
		{"bad memory", []string{"vm", "create", "--name", "x3", "--memory", "1"}, api.ClassBadRequest, "memory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := h.kiln(t, c.args...)
			if r.code != c.class.ExitCode() || !strings.Contains(r.stderr, c.want) {
				t.Fatalf("want exit %d and %q in stderr: %s", c.class.ExitCode(), c.want, r)
			}
		})
	}
	// Nothing was created by any of them.
	vms, _ := h.client().ListVMs(context.Background())
	for _, v := range vms {
		if strings.HasPrefix(v.Name, "x") {
			t.Errorf("a failed create left VM %s", v.Name)
		}
	}
	if _, err := h.client().GetImage(context.Background(), "evil"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("a rejected tarball left an image: %v", err)
	}
}

// TestCrashMidCreateIsRepaired kills the daemon (SIGKILL) at each create
// stage and checks that the next daemon rolls the half-made VM back.
func TestCrashMidCreateIsRepaired(t *testing.T) {
	h := setup(t)
	for _, stage := range []string{"prepare disks", "write config", "boot", "vmm started", "wait for agent"} {
		t.Run(strings.ReplaceAll(stage, " ", "-"), func(t *testing.T) {
			h.killDaemon(t, syscall.SIGTERM)
			if err := h.startDaemon([]string{"KILN_FAILPOINT=" + stage}); err != nil {
				t.Fatal(err)
			}
			r := h.kiln(t, "vm", "create", "--name", "crashy")
			if r.code == 0 {
				t.Fatalf("create survived the failpoint: %s", r)
			}
			h.killDaemon(t, syscall.SIGKILL) // already dead; reap and forget it
			if err := h.startDaemon(nil); err != nil {
				t.Fatal(err)
			}
			if _, err := h.client().GetVM(context.Background(), "crashy"); !errors.Is(err, api.ErrNotFound) {
				t.Fatalf("half-made VM still recorded after reconcile: %v", err)
			}
			entries, _ := os.ReadDir(filepath.Join(h.root, "state", "vms"))
			for _, e := range entries {
				if vm, err := h.client().GetVM(context.Background(), e.Name()); err != nil {
					t.Errorf("reconcile left files of an unknown VM: %s (%v)", e.Name(), err)
				} else {
					_ = vm
				}
			}
			if pids := vmmPIDs(filepath.Join(h.root, "run")); len(pids) > 0 {
				running, _ := h.client().ListVMs(context.Background())
				live := map[int]bool{}
				for _, v := range running {
					live[v.PID] = true
				}
				for _, p := range pids {
					if !live[p] {
						t.Errorf("reconcile left VMM pid %d (%s) running", p, strconv.Itoa(p))
					}
				}
			}
		})
	}
}

func TestPTYAndConsoleLog(t *testing.T) {
	h := setup(t)
	h.createVM(t, "tty")
	// -t without a terminal on our side: the guest still gets a PTY (24x80).
	r := h.mustKiln(t, "vm", "exec", "-t", "tty", "--", "stty", "size")
	if strings.TrimSpace(r.stdout) != "24 80" {
		t.Fatalf("PTY size in the guest: %s", r)
	}
	r = h.mustKiln(t, "vm", "exec", "tty", "--", "sh", "-c", "test -t 0 && echo tty || echo notty")
	if strings.TrimSpace(r.stdout) != "notty" {
		t.Fatalf("exec without -t must not get a terminal: %s", r)
	}
	r = h.mustKiln(t, "vm", "logs", "tty")
	if !strings.Contains(r.stdout, "kiln-agent") {
		t.Fatalf("console log does not show the agent's boot lines:\n%s", r.stdout)
	}
	r = h.mustKiln(t, "vm", "list")
	if !strings.Contains(r.stdout, "tty") || !strings.Contains(r.stdout, "running") {
		t.Fatalf("vm list:\n%s", r.stdout)
	}
	r = h.mustKiln(t, "--json", "vm", "show", "tty")
	if !strings.Contains(r.stdout, `"state": "running"`) || !strings.Contains(r.stdout, `"host_key_fingerprint": "SHA256:`) {
		t.Fatalf("vm show --json:\n%s", r.stdout)
	}
}
