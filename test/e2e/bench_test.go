package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/kilnvm/kiln/internal/guest"
	"github.com/kilnvm/kiln/internal/paths"
	"github.com/kilnvm/kiln/internal/vmm"
	"github.com/kilnvm/kiln/internal/vmm/qemu"
)

// TestBenchmark is `make bench`: it measures kiln against bare baselines in
// one run and writes the medians, spreads and ratios to $KILN_BENCH_OUT.
// It is skipped unless that variable is set.
func TestBenchmark(t *testing.T) {
	out := os.Getenv("KILN_BENCH_OUT")
	if out == "" {
		t.Skip("set KILN_BENCH_OUT=FILE (make bench) to run the benchmarks")
	}
	h := setup(t)
	rounds := 5
	ctx := context.Background()

	// A reference VM gives the exact kernel, initrd and disk kiln boots; the
	// baseline boots them with the same QEMU argv, no daemon, no CLI.
	ref := h.createVM(t, "benchref")
	h.mustKiln(t, "vm", "stop", "benchref")
	refDir := filepath.Join(h.root, "state", "vms", ref.ID)

	var kilnRun, bare, execKiln, execDirect []time.Duration
	for i := 0; i < rounds; i++ {
		start := time.Now()
		h.mustKiln(t, "vm", "run", "--rm", "--name", fmt.Sprintf("bench%d", i), "--", "true")
		kilnRun = append(kilnRun, time.Since(start))
		d, gc, stop := bareVM(t, h, refDir)
		bare = append(bare, d)
		if i == rounds-1 {
			// Exec round trip on the bare VM: the agent's SSH server dialled
			// in-process on the VM's channel, no CLI and no daemon.
			for j := 0; j < rounds*4; j++ {
				start := time.Now()
				if code, err := gc.Exec(ctx, guest.ExecRequest{Command: "true"}); err != nil || code != 0 {
					t.Fatalf("direct exec: %d %v", code, err)
				}
				execDirect = append(execDirect, time.Since(start))
			}
		}
		stop()
	}
	h.createVM(t, "benchexec")
	for i := 0; i < rounds*4; i++ {
		start := time.Now()
		h.mustKiln(t, "vm", "exec", "benchexec", "--", "true")
		execKiln = append(execKiln, time.Since(start))
	}

	accel := "tcg"
	if v, err := h.client().Version(ctx); err == nil {
		accel = v.Accel
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## Boot and exec\n\nMeasured by `make bench` (`TestBenchmark` in `test/e2e`) on %s, %d CPUs, QEMU accel **%s**, %d rounds each, on %s.\n",
		runtime.GOARCH, runtime.NumCPU(), accel, rounds, time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&b, "Figures are medians with the spread (min–max); ratios are kiln's median over the baseline's, from the same run.\n")
	fmt.Fprintf(&b, "Under TCG absolute times are far above what KVM gives; the ratios are what to watch.\n\n")
	fmt.Fprintf(&b, "| measurement | kiln | baseline | ratio |\n| --- | --- | --- | --- |\n")
	row := func(name string, k, base []time.Duration) {
		fmt.Fprintf(&b, "| %s | %s | %s | **%.2f×** |\n", name, spread(k), spread(base), float64(median(k))/float64(median(base)))
	}
	row("`kiln vm run --rm -- true` vs bare QEMU booting the same kernel, initrd and disk until the agent ran `true`", kilnRun, bare)
	row("`kiln vm exec VM -- true` (CLI → daemon → agent) vs an SSH exec on the agent channel in-process", execKiln, execDirect)
	fmt.Fprintf(&b, "\nWhat the kiln side adds: the CLI process, the create operation (COW disk clone, keys, per-VM initrd), "+
		"daemon ↔ agent channel set-up, and the VM's deletion for `--rm`. The bare side is `qemu-system-x86_64` with the argv "+
		"the driver builds, timed from exec until the agent answered an SSH exec of `true`.\n\n"+
		"The exec ratio is dominated by what each `kiln vm exec` process pays once: its own start, a credentials request, "+
		"the stream upgrade on the daemon socket and a fresh SSH handshake; the in-process baseline reuses one SSH connection.\n")
	if err := writeBenchSection(out, "boot-exec", b.String()); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + b.String())
}

// bareVM boots the reference VM's kernel, initrd and a fresh copy of its
// disk with the driver's argv, and times it until an exec of `true`
// answers. The caller stops the VM.
func bareVM(t *testing.T, h *harness, refDir string) (time.Duration, *guest.Client, func()) {
	t.Helper()
	dir, err := os.MkdirTemp(filepath.Join(h.root, "run"), "bare")
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "root.ext4")
	if out, err := exec.Command("cp", "--sparse=always", filepath.Join(refDir, "root.ext4"), disk).CombinedOutput(); err != nil {
		t.Fatalf("copy disk: %v %s", err, out)
	}
	cmdline, err := os.ReadFile(filepath.Join(refDir, paths.VMCmdline))
	if err != nil {
		t.Fatalf("reference VM has no recorded kernel command line: %v", err)
	}
	spec := vmm.Spec{Name: "bare", Dir: dir, CPUs: 2, MemoryMiB: 512,
		Kernel: filepath.Join(h.root, "state", "kernels", "test", "vmlinuz"),
		Initrd: filepath.Join(refDir, paths.VMInitrd), Cmdline: strings.TrimSpace(string(cmdline)),
		Disks: []vmm.Disk{{Path: disk}}, SerialLog: filepath.Join(dir, "console.log")}
	rel, err := qemuRelease()
	if err != nil {
		t.Fatal(err)
	}
	argv := qemu.Cmdline(spec, qemu.PathsFor(dir), "tcg", vmm.ChannelSerial, rel)
	start := time.Now()
	cmd := exec.Command("qemu-system-x86_64", argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	gc := directClientAt(t, refDir, filepath.Join(dir, qemu.AgentSocketName))
	stop := func() {
		gc.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		os.RemoveAll(dir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := gc.WaitReady(ctx); err != nil {
		stop()
		t.Fatalf("bare boot: %v", err)
	}
	if code, err := gc.Exec(ctx, guest.ExecRequest{Command: "true"}); err != nil || code != 0 {
		stop()
		t.Fatalf("bare exec: %d %v", code, err)
	}
	return time.Since(start), gc, stop
}

func qemuRelease() (qemu.Release, error) {
	out, err := exec.Command("qemu-system-x86_64", "--version").Output()
	if err != nil {
		return qemu.Release{}, err
	}
	return qemu.ParseVersion(string(out))
}

// directClientAt is an SSH client of the agent on a serial socket, with
// the keys in a VM directory: no daemon involved.
func directClientAt(t *testing.T, vmDir, sock string) *guest.Client {
	t.Helper()
	hostPEM, err := os.ReadFile(filepath.Join(vmDir, "host_key"))
	if err != nil {
		t.Fatal(err)
	}
	hs, err := ssh.ParsePrivateKey(hostPEM)
	if err != nil {
		t.Fatal(err)
	}
	cPEM, err := os.ReadFile(filepath.Join(vmDir, "client_key"))
	if err != nil {
		t.Fatal(err)
	}
	cs, err := ssh.ParsePrivateKey(cPEM)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := guest.NewSerialChannel(guest.SerialConfig{SocketPath: sock})
	if err != nil {
		t.Fatal(err)
	}
	return guest.NewClient(ch, hs.PublicKey(), cs)
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func spread(ds []time.Duration) string {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return fmt.Sprintf("%.2fs (%.2f–%.2f)", median(s).Seconds(), s[0].Seconds(), s[len(s)-1].Seconds())
}
