package e2e

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/testutil"
)

// jailUID is who the jailed VMM runs as: Debian's nobody:nogroup.
const jailUID = 65534

// jailerBinary is $KILN_E2E_JAILER (a real jailer, beside a real
// Firecracker) or else the test-only fake of jailer, built here.
func jailerBinary(t *testing.T, h *harness) string {
	t.Helper()
	if bin := os.Getenv("KILN_E2E_JAILER"); bin != "" {
		return bin
	}
	return goBuild(t, "./internal/vmm/firecracker/fakejailer/cmd/fakejailer", filepath.Join(h.bin, "fakejailer"))
}

// cgroup2Dir is where the cgroup v2 hierarchy is mounted.
func cgroup2Dir(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fl := strings.Fields(sc.Text()); len(fl) >= 3 && fl[2] == "cgroup2" {
			return fl[1]
		}
	}
	t.Skip("no cgroup2 mount: the jailer needs cgroup v2")
	return ""
}

// procUID is the real uid of pid.
func procUID(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "Uid:" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, errors.New("no Uid line")
}

// TestFirecrackerJailer runs the Firecracker lifecycle through jailer: the
// VMM runs as an unprivileged user in a per-VM chroot holding hard links
// of the VM's files and in its own cgroup; stop, a daemon restart and
// delete each leave the right things behind, and nothing at the end. A
// chroot base on another filesystem is refused and creates nothing.
func TestFirecrackerJailer(t *testing.T) {
	testutil.RequireRoot(t)
	h := setup(t)
	cg := cgroup2Dir(t)
	jailer := jailerBinary(t, h)
	jailEnv := []string{"KILN_JAILER_BINARY=" + jailer, "KILN_JAILER_UID=" + strconv.Itoa(jailUID), "KILN_JAILER_GID=" + strconv.Itoa(jailUID)}

	// Hard links cannot cross filesystems: /dev/shm is a tmpfs.
	useFirecracker(t, h, append(jailEnv, "KILN_JAILER_CHROOT_BASE=/dev/shm/kiln-e2e-jail")...)
	r := h.kiln(t, "vm", "create", "--name", "jx")
	if r.code == 0 || !strings.Contains(r.stderr, "on another filesystem than the chroot base") {
		t.Fatalf("create with a cross-filesystem chroot base: %s", r)
	}
	if _, err := h.client().GetVM(context.Background(), "jx"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("the failed create left a VM: %v", err)
	}
	if exists("/dev/shm/kiln-e2e-jail") {
		os.RemoveAll("/dev/shm/kiln-e2e-jail")
		t.Errorf("the failed create made a chroot on /dev/shm")
	}

	h.killDaemon(t, syscall.SIGTERM)
	fc := firecrackerBinary(t, h)
	// Rate limits ride along: the emulator checks each request against the
	// API spec, so a malformed limiter would fail the create.
	env := append([]string{"KILN_VMM=firecracker", "KILN_FIRECRACKER_BINARY=" + fc,
		"KILN_FIRECRACKER_DRIVE_MIBPS=512", "KILN_FIRECRACKER_DRIVE_IOPS=20000", "KILN_FIRECRACKER_NET_MIBPS=100"}, jailEnv...)
	if err := h.startDaemon(env); err != nil {
		t.Fatal(err)
	}
	vm := h.createVM(t, "jl")
	fcName := filepath.Base(fc) // jailer names the chroot and cgroup after it
	// The driver removes each VM's cgroup; the parent jailer made for all
	// of them is left, as jailer leaves it: remove it if it is empty.
	t.Cleanup(func() { syscall.Rmdir(filepath.Join(cg, fcName)) })
	jailDir := filepath.Join(h.root, "state", "jail", fcName, "jl")
	cgroup := filepath.Join(cg, fcName, "jl")
	runDir := filepath.Join(h.root, "run", "vm", vm.ID)
	checkJailed := func(pid int) {
		t.Helper()
		if uid, err := procUID(pid); err != nil || uid != jailUID {
			t.Errorf("VMM pid %d runs as uid %d (%v), want %d", pid, uid, err, jailUID)
		}
		var disk, link syscall.Stat_t
		if err := errors.Join(syscall.Stat(filepath.Join(h.root, "state", "vms", vm.ID, "root.ext4"), &disk),
			syscall.Stat(filepath.Join(jailDir, "root", "drive0"), &link)); err != nil || disk.Ino != link.Ino {
			t.Errorf("the jail's drive0 is not a hard link of the VM's disk: %v", err)
		}
		if link.Uid != jailUID {
			t.Errorf("the VM's disk is owned by %d, want the jail user", link.Uid)
		}
		if target, err := os.Readlink(filepath.Join(runDir, "firecracker.sock")); err != nil || !strings.HasPrefix(target, jailDir+"/") {
			t.Errorf("the API socket %s -> %q (%v), want a link into %s", filepath.Join(runDir, "firecracker.sock"), target, err, jailDir)
		}
		if b, err := os.ReadFile(filepath.Join(cgroup, "cgroup.procs")); err != nil || !strings.Contains("\n"+string(b), "\n"+strconv.Itoa(pid)+"\n") {
			t.Errorf("VMM pid %d is not in the jail's cgroup %s: %q %v", pid, cgroup, b, err)
		}
	}
	checkReleased := func(pid int, what string) {
		t.Helper()
		testutil.WaitFor(t, 10*time.Second, "VMM to be gone", func() bool { return syscall.Kill(pid, 0) != nil })
		for _, p := range []string{jailDir, cgroup} {
			if exists(p) {
				t.Errorf("%s left %s behind", what, p)
			}
		}
	}
	checkJailed(vm.PID)

	r = h.kilnIn(t, strings.NewReader("through the jail\n"), "vm", "exec", "jl", "--", "cat")
	if r.code != 0 || r.stdout != "through the jail\n" {
		t.Fatalf("exec: %s", r)
	}

	// Stop keeps the data and releases the jail; start jails again.
	started := h.stopStartKeepsData(t, "jl", vm.PID, func() { checkReleased(vm.PID, "stop") })
	checkJailed(started.PID)

	// A SIGKILLed daemon finds the jailed VMM again.
	after := h.survivesDaemonKill(t, env, "jl", started.PID)

	h.mustKiln(t, "vm", "delete", "jl")
	checkReleased(after.PID, "delete")
	for _, d := range h.vmDirs(vm.ID) {
		if exists(d) {
			t.Errorf("delete left %s behind", d)
		}
	}
}

// TestFirecrackerJailerNetwork boots a jailed Firecracker VM with
// networking on: the TAPs are the jail user's, so the unprivileged VMM
// attaches to one, and the guest reaches the bridge.
func TestFirecrackerJailerNetwork(t *testing.T) {
	testutil.RequireRoot(t)
	h, ns, nsName := netHarness(t)
	base := setup(t)
	jailer := jailerBinary(t, base)
	h.killDaemon(t, syscall.SIGTERM)
	env := []string{"KILN_VMM=firecracker", "KILN_FIRECRACKER_BINARY=" + firecrackerBinary(t, base),
		"KILN_JAILER_BINARY=" + jailer, "KILN_JAILER_UID=" + strconv.Itoa(jailUID), "KILN_JAILER_GID=" + strconv.Itoa(jailUID)}
	// `ip netns exec` remounts /sys, which hides the cgroup hierarchy
	// jailer needs; nsenter changes only the network namespace.
	if err := startNetDaemonVia(h, []string{"nsenter", "--net=/run/netns/" + nsName}, env); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Rmdir(filepath.Join(cgroup2Dir(t), "firecracker-fcemu")) })
	vm := h.createVM(t, "jn")
	if uid, err := procUID(vm.PID); err != nil || uid != jailUID {
		t.Fatalf("VMM runs as uid %d (%v), want the jail user", uid, err)
	}
	_, attached := taps(t, ns)
	if len(attached) != 1 {
		t.Fatalf("TAPs attached: %v", attached)
	}
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	l, err := nh.LinkByName(attached[0])
	nh.Close()
	if tap, ok := l.(*netlink.Tuntap); err != nil || !ok || tap.Owner != jailUID {
		t.Fatalf("TAP %s: %#v %v, want one owned by %d", attached[0], l, err, jailUID)
	}
	if r := h.kiln(t, "vm", "exec", "jn", "--", "ping", "-c", "1", "-W", "10", "10.231.0.1"); r.code != 0 {
		t.Fatalf("the jailed VM cannot reach the bridge: %s\nconsole:\n%s", r, h.kiln(t, "vm", "logs", "jn").stdout)
	}
	h.mustKiln(t, "vm", "delete", "jn")
	if got := leftovers(t, ns, attached); len(got) != 0 {
		t.Fatalf("after delete: %v", got)
	}
}
