package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/testutil"
	"github.com/kilnvm/kiln/internal/vmm"
)

// The tests below boot the Debian kernel with a busybox initramfs under
// real QEMU. Each boot takes 7-10 s under TCG on an idle host (20-40 s on
// a loaded one), so the count is small, independent boots run in
// parallel, and waits are generous.

// helperEnv makes the test binary act as a throwaway parent process that
// starts a VMM and exits (see TestDetachedSurvivesParent).
const (
	helperEnv     = "QEMU_DRIVER_TEST_HELPER"
	helperSpecEnv = "QEMU_DRIVER_TEST_SPEC"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "start":
		os.Exit(startHelper())
	case "ignore-term":
		// A stand-in for a VMM that ignores SIGTERM.
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ready")
		time.Sleep(time.Hour)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startHelper starts the spec from the environment and prints the handle.
func startHelper() int {
	var spec vmm.Spec
	if err := json.Unmarshal([]byte(os.Getenv(helperSpecEnv)), &spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h, err := New(Config{}).Start(ctx, spec)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	json.NewEncoder(os.Stdout).Encode(h)
	return 0
}

// requireQEMU skips t when QEMU is not installed.
func requireQEMU(t *testing.T) {
	t.Helper()
	testutil.RequireCommand(t, DefaultBinary)
}

// initramfs writes an uncompressed newc cpio holding busybox as
// /bin/busybox, /dev/console and initScript as /init.
func initramfs(t *testing.T, initScript string) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("needs busybox (busybox-static)")
	}
	busybox, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	var w cpioWriter
	w.add("bin", unix.S_IFDIR|0o755, 0, nil)
	w.add("dev", unix.S_IFDIR|0o755, 0, nil)
	w.add("proc", unix.S_IFDIR|0o755, 0, nil)
	w.add("dev/console", unix.S_IFCHR|0o600, unix.Mkdev(5, 1), nil)
	w.add("bin/busybox", unix.S_IFREG|0o755, 0, busybox)
	w.add("init", unix.S_IFREG|0o755, 0, []byte(initScript))
	w.add("TRAILER!!!", 0, 0, nil)
	path := filepath.Join(t.TempDir(), "initramfs.cpio")
	if err := os.WriteFile(path, w.buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// cpioWriter writes the newc format the kernel unpacks.
type cpioWriter struct {
	buf bytes.Buffer
	ino int
}

func (w *cpioWriter) add(name string, mode uint32, rdev uint64, data []byte) {
	w.ino++
	nlink := 1
	if mode&unix.S_IFMT == unix.S_IFDIR {
		nlink = 2
	}
	fmt.Fprintf(&w.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, nlink, 0, len(data), 0, 0,
		unix.Major(rdev), unix.Minor(rdev), len(name)+1, 0)
	w.buf.WriteString(name)
	w.buf.WriteByte(0)
	w.pad()
	w.buf.Write(data)
	w.pad()
}

func (w *cpioWriter) pad() {
	for w.buf.Len()%4 != 0 {
		w.buf.WriteByte(0)
	}
}

// bootSpec returns a spec booting the Debian kernel with initScript as
// /init, in a fresh runtime dir.
func bootSpec(t *testing.T, name, initScript string) vmm.Spec {
	t.Helper()
	requireQEMU(t)
	kernel, _ := testutil.DebianKernel(t)
	dir := t.TempDir()
	return vmm.Spec{
		Name:      name,
		Dir:       filepath.Join(dir, "vm"),
		CPUs:      1,
		MemoryMiB: 256,
		Kernel:    kernel,
		Initrd:    initramfs(t, initScript),
		// panic=-1 plus -no-reboot: a panicking guest ends QEMU at once.
		Cmdline:   "console=ttyS0 panic=-1",
		SerialLog: filepath.Join(dir, "console.log"),
	}
}

// startVM starts spec and makes sure it is gone when the test ends.
func startVM(t *testing.T, d *Driver, spec vmm.Spec) vmm.Handle {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Kill(context.Background(), h); err != nil {
			t.Errorf("cleanup kill: %v", err)
		}
	})
	return h
}

// waitConsole waits until the guest console log contains marker; on
// timeout it shows the end of the console and of QEMU's log.
func waitConsole(t *testing.T, spec vmm.Spec, marker string) {
	t.Helper()
	const timeout = 3 * time.Minute
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(spec.SerialLog)
		if bytes.Contains(b, []byte(marker)) {
			return
		}
		if time.Now().After(deadline) {
			q, _ := os.ReadFile(filepath.Join(spec.Dir, LogFileName))
			t.Fatalf("no %q on the guest console after %s\n--- console tail:\n%s\n--- qemu.log:\n%s",
				marker, timeout, tailBytes(b, 1500), tailBytes(q, 1500))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tailBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// qemusMentioning lists live QEMU processes whose command line contains
// s, an absolute path unique to the test. Only QEMU processes: tests must
// never touch anything they did not start.
func qemusMentioning(t *testing.T, s string) []int {
	t.Helper()
	if !filepath.IsAbs(s) || len(s) < 8 {
		t.Fatalf("qemusMentioning(%q): want a unique absolute path", s)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		argv0, _, _ := bytes.Cut(b, []byte{0})
		if err == nil && filepath.Base(string(argv0)) == DefaultBinary && bytes.Contains(b, []byte(s)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procGone reports whether /proc has no entry for pid (exited and reaped).
func procGone(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return errors.Is(err, fs.ErrNotExist)
}

func TestBootPowerOff(t *testing.T) {
	t.Parallel()
	marker := fmt.Sprintf("KILN-MARKER-%d", time.Now().UnixNano())
	spec := bootSpec(t, "poweroff", "#!/bin/busybox sh\necho "+marker+"\n/bin/busybox poweroff -f\n")
	spec.CPUs = 2 // under TCG the driver runs one vCPU, and says so
	var logs syncBuffer
	d := New(Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	h := startVM(t, d, spec)
	if h.Accel == AccelTCG && !strings.Contains(logs.String(), "TCG guests run with one vCPU") {
		t.Errorf("no note about the vCPU count in the log:\n%s", logs.String())
	}

	if h.Driver != "qemu" || h.Channel != vmm.ChannelSerial || h.Accel != d.Features().Accel ||
		h.APISocket != filepath.Join(spec.Dir, "qmp.sock") || h.AgentSocket != filepath.Join(spec.Dir, "agent.sock") {
		t.Errorf("handle = %+v", h)
	}
	if !d.Alive(h) {
		t.Fatal("not alive right after Start")
	}
	if fi, err := os.Stat(h.AgentSocket); err != nil || fi.Mode()&fs.ModeSocket == 0 {
		t.Errorf("agent socket: %v %v", fi, err)
	}
	if b, err := os.ReadFile(filepath.Join(spec.Dir, "qemu.pid")); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(h.PID) {
		t.Errorf("pid file = %q, %v; want %d", b, err, h.PID)
	}
	if fi, err := os.Stat(spec.Dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("runtime dir mode: %v %v", fi, err)
	}
	// A recycled pid is not our VMM.
	if d.Alive(vmm.Handle{PID: h.PID, StartTicks: h.StartTicks + 1}) {
		t.Error("Alive ignores the start ticks")
	}

	waitConsole(t, spec, marker)
	testutil.WaitFor(t, time.Minute, "qemu to exit after the guest powered off", func() bool { return !d.Alive(h) })
	// We are its parent: it must be reaped, not left a zombie.
	testutil.WaitFor(t, 10*time.Second, "qemu to be reaped", func() bool { return procGone(h.PID) })
	// Stopping what is gone is not an error.
	if err := d.Stop(t.Context(), h, time.Second); err != nil {
		t.Errorf("Stop after exit: %v", err)
	}
}

func TestBootStopAndKill(t *testing.T) {
	t.Parallel()
	idle := "#!/bin/busybox sh\necho KILN-IDLE\nwhile :; do /bin/busybox sleep 3600; done\n"
	spec := bootSpec(t, "idle", idle)
	var logs syncBuffer
	d := New(Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	h := startVM(t, d, spec)

	// A second VMM in the same runtime dir is refused, and the first survives.
	if _, err := d.Start(t.Context(), spec); api.ClassOf(err) != api.ClassConflict {
		t.Errorf("second Start in the same dir = %v, want conflict", err)
	}
	if !d.Alive(h) {
		t.Fatal("first VMM died after the refused second Start")
	}

	// Start another VM to Kill; it need not finish booting.
	spec2 := bootSpec(t, "idle2", idle)
	h2 := startVM(t, d, spec2)

	waitConsole(t, spec, "KILN-IDLE")

	// The caller's context ends before the grace: Stop gives up, says so,
	// and leaves the VMM running.
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	err := d.Stop(ctx, h, time.Minute)
	cancel()
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, vmm.ErrStillRunning) {
		t.Errorf("Stop with an expiring context = %v, want deadline exceeded and still running", err)
	}
	if !d.Alive(h) {
		t.Fatal("VMM died although Stop gave up")
	}

	// The busybox guest ignores the ACPI power button: Stop escalates to
	// SIGTERM, which QEMU obeys.
	begin := time.Now()
	if err := d.Stop(t.Context(), h, time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("Stop took %s", time.Since(begin))
	if d.Alive(h) || !procGone(h.PID) {
		t.Error("VMM still there after Stop")
	}
	if l := logs.String(); !strings.Contains(l, "by=SIGTERM") || !strings.Contains(l, "guest did not shut down within 1s") {
		t.Errorf("log does not show the escalation:\n%s", l)
	}

	if err := d.Kill(t.Context(), h2); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if d.Alive(h2) || !procGone(h2.PID) {
		t.Error("VMM still there after Kill")
	}
	if pids := qemusMentioning(t, spec.Dir); len(pids) > 0 {
		t.Errorf("processes left mentioning %s: %v", spec.Dir, pids)
	}
}

// TestStopEscalatesToKill runs the stop ladder against a process that
// ignores SIGTERM and has no QMP socket: no QEMU or boot needed.
func TestStopEscalatesToKill(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=ignore-term")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	// Wait until it has set up its signal handling.
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil || string(buf) != "ready\n" {
		t.Fatalf("helper: %q %v", buf, err)
	}
	st, err := vmm.ReadProcStat(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	h := vmm.Handle{PID: cmd.Process.Pid, StartTicks: st.StartTicks,
		APISocket: filepath.Join(t.TempDir(), "no-such-qmp.sock")}

	var logs syncBuffer
	d := New(Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	d.termWait = 300 * time.Millisecond
	if err := d.Stop(t.Context(), h, 200*time.Millisecond); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("process not gone after Stop")
	}
	if !strings.Contains(cmd.ProcessState.String(), "killed") {
		t.Errorf("process ended by %s, want SIGKILL", cmd.ProcessState)
	}
	l := logs.String()
	for _, want := range []string{"by=SIGKILL", "qmp system_powerdown", "did not exit within 300ms of SIGTERM"} {
		if !strings.Contains(l, want) {
			t.Errorf("log lacks %q:\n%s", want, l)
		}
	}
}

// TestDetachedSurvivesParent starts QEMU from a throwaway process that then
// exits: the VMM lives on in its own session and can still be killed.
func TestDetachedSurvivesParent(t *testing.T) {
	t.Parallel()
	spec := bootSpec(t, "orphan", "#!/bin/busybox sh\nwhile :; do /bin/busybox sleep 3600; done\n")
	js, _ := json.Marshal(spec)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=start", helperSpecEnv+"="+string(js))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	// Whatever happened, nothing may outlive the test.
	t.Cleanup(func() {
		for _, pid := range qemusMentioning(t, spec.Dir) {
			unix.Kill(pid, unix.SIGKILL)
		}
	})
	if err != nil {
		t.Fatalf("helper: %v: %s", err, stderr.String())
	}
	var h vmm.Handle
	if err := json.Unmarshal(out, &h); err != nil {
		t.Fatalf("helper output %q: %v", out, err)
	}
	d := New(Config{})
	if !d.Alive(h) {
		t.Fatal("VMM died with the process that started it")
	}
	sid, err := unix.Getsid(h.PID)
	if err != nil {
		t.Fatal(err)
	}
	mySid, _ := unix.Getsid(0)
	if sid != h.PID || sid == mySid {
		t.Errorf("VMM session %d, want its own (pid %d; ours %d)", sid, h.PID, mySid)
	}
	if err := d.Kill(t.Context(), h); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if d.Alive(h) {
		t.Error("alive after Kill")
	}
}

func TestStartBadSpec(t *testing.T) {
	requireQEMU(t)
	kernel, _ := testutil.DebianKernel(t)
	t.Parallel()
	tmp := t.TempDir()
	garbage := filepath.Join(tmp, "garbage-kernel")
	if err := os.WriteFile(garbage, bytes.Repeat([]byte("not a kernel\n"), 100), 0o644); err != nil {
		t.Fatal(err)
	}
	aFile := filepath.Join(tmp, "a-file")
	if err := os.WriteFile(aFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name   string
		mod    func(s *vmm.Spec)
		ctx    context.Context // nil: the test's
		class  api.Class
		errHas []string
	}{
		{
			name:  "missing kernel",
			mod:   func(s *vmm.Spec) { s.Kernel = filepath.Join(tmp, "no-such-vmlinuz") },
			class: api.ClassBadRequest, errHas: []string{"kernel", "no-such-vmlinuz", "no such file"},
		},
		{
			name:  "missing disk",
			mod:   func(s *vmm.Spec) { s.Disks = []vmm.Disk{{Path: filepath.Join(tmp, "no-such-disk")}} },
			class: api.ClassBadRequest, errHas: []string{"disk 0", "no-such-disk"},
		},
		{
			name:  "runtime dir cannot be created",
			mod:   func(s *vmm.Spec) { s.Dir = filepath.Join(aFile, "vm") },
			class: api.ClassInternal, errHas: []string{"create runtime dir", "not a directory"},
		},
		{
			name:  "relative runtime dir",
			mod:   func(s *vmm.Spec) { s.Dir = "vm" },
			class: api.ClassBadRequest, errHas: []string{"not an absolute path"},
		},
		{
			name:  "qemu rejects the kernel",
			mod:   func(s *vmm.Spec) { s.Kernel = garbage },
			class: api.ClassInternal, errHas: []string{"qemu exited (exit status 1) before it was ready", "kernel"},
		},
		{
			// QEMU starts, then Start gives up waiting and kills it.
			name: "context cancelled", mod: func(s *vmm.Spec) {}, ctx: cancelled,
			class: api.ClassCanceled, errHas: []string{"wait for qemu to start: context canceled"},
		},
		{
			name:  "console log cannot be opened",
			mod:   func(s *vmm.Spec) { s.SerialLog = filepath.Join(tmp, "no-such-dir", "console.log") },
			class: api.ClassInternal, errHas: []string{"qemu exited", "no-such-dir/console.log"},
		},
	}
	d := New(Config{})
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := vmm.Spec{
				Name: "bad", Dir: filepath.Join(tmp, fmt.Sprintf("vm-%d", i)), CPUs: 1, MemoryMiB: 128,
				Kernel: kernel, Cmdline: "console=ttyS0", SerialLog: filepath.Join(tmp, fmt.Sprintf("console-%d.log", i)),
			}
			tt.mod(&spec)
			// Processes are looked for by the test's unique temp dir, which
			// every path in the spec lies under.
			t.Cleanup(func() {
				for _, pid := range qemusMentioning(t, tmp) {
					unix.Kill(pid, unix.SIGKILL)
				}
			})
			ctx := tt.ctx
			if ctx == nil {
				ctx = t.Context()
			}
			h, err := d.Start(ctx, spec)
			if err == nil {
				d.Kill(context.Background(), h)
				t.Fatalf("Start succeeded: %+v", h)
			}
			t.Logf("error: %v", err)
			for _, want := range tt.errHas {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
			if c := api.ClassOf(err); c != tt.class {
				t.Errorf("class = %s, want %s", c, tt.class)
			}
			if pids := qemusMentioning(t, tmp); len(pids) > 0 {
				t.Errorf("qemu processes left: %v", pids)
			}
			for _, f := range []string{"qmp.sock", "agent.sock", "qemu.pid"} {
				if _, err := os.Stat(filepath.Join(spec.Dir, f)); err == nil {
					t.Errorf("%s left behind", f)
				}
			}
		})
	}
	if n := d.children.Len(); n != 0 {
		t.Errorf("%d children not reaped", n)
	}
}

func TestProbe(t *testing.T) {
	t.Run("real qemu", func(t *testing.T) {
		requireQEMU(t)
		d := New(Config{})
		if err := d.Probe(t.Context()); err != nil {
			t.Fatalf("Probe: %v", err)
		}
		v, err := d.Version(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseVersion("QEMU emulator version " + v); err != nil || strings.Count(v, ".") != 2 {
			t.Errorf("Version = %q", v)
		}
	})
	t.Run("missing binary", func(t *testing.T) {
		d := New(Config{Binary: "kiln-no-such-qemu"})
		err := d.Probe(t.Context())
		if api.ClassOf(err) != api.ClassFailedPrecondition || !strings.Contains(err.Error(), "kiln-no-such-qemu") ||
			!strings.Contains(api.HintOf(err), "apt-get install qemu-system-x86") {
			t.Errorf("Probe = %v (hint %q)", err, api.HintOf(err))
		}
	})
	// Fake binaries on PATH stand in for QEMU builds we do not have.
	fake := func(t *testing.T, script string) *Driver {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, DefaultBinary), []byte("#!/bin/sh\n"+script), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PATH", dir)
		return New(Config{})
	}
	t.Run("no microvm", func(t *testing.T) {
		d := fake(t, `case "$1" in --version) echo "QEMU emulator version 8.0.0";; *) echo "pc  Standard PC"; echo "q35  Standard PC (Q35)";; esac`)
		if v, err := d.Version(t.Context()); v != "8.0.0" || err != nil {
			t.Errorf("Version = %q, %v", v, err)
		}
		err := d.Probe(t.Context())
		if api.ClassOf(err) != api.ClassFailedPrecondition || !strings.Contains(err.Error(), "microvm") {
			t.Errorf("Probe = %v", err)
		}
	})
	t.Run("unparsable version", func(t *testing.T) {
		d := fake(t, `echo "something else"`)
		if err := d.Probe(t.Context()); err == nil || !strings.Contains(err.Error(), "unrecognised qemu --version output") {
			t.Errorf("Probe = %v", err)
		}
	})
}
