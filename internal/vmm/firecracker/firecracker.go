// Package firecracker runs kiln VMs under Firecracker: it speaks
// Firecracker's REST API (written from the official spec,
// firecracker-api-v1.16.1.yaml) over the API socket, starts the VMM
// detached in its own session, reaches the guest agent over hybrid vsock,
// and stops a VM by a ladder of SendCtrlAltDel, SIGTERM and SIGKILL.
//
// The requests that configure a VM are a pure function of the vmm.Spec
// (Plan); the contract tests check each against the spec, and the test-only
// emulator in fcemu answers them on hosts without Firecracker or KVM.
package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/system"
	"github.com/kilnvm/kiln/internal/vmm"
)

// DefaultBinary is looked up on PATH when Config.Binary is empty.
const DefaultBinary = "firecracker"

// Config configures a Driver.
type Config struct {
	// Binary is the firecracker executable: a path or a name on PATH.
	Binary string
	// Limits are rate limits applied to every drive and NIC (optional).
	Limits Limits
	Logger *slog.Logger
	// Runner runs `firecracker --version`; nil means system.ExecRunner.
	Runner system.Runner
	// KVM reports whether /dev/kvm is usable for Firecracker (nil: read
	// the live host). Only ProbeKVM consults it.
	KVM func() error
	// ELFKernel returns an ELF vmlinux for a bzImage kernel path, for
	// releases that boot ELF only (see KernelFormats); the daemon passes
	// kernel.Store.ELFImage. Nil: such a release refuses a bzImage.
	ELFKernel func(ctx context.Context, bzImage string) (string, error)
}

// Driver implements vmm.Driver with Firecracker. Safe for concurrent use.
type Driver struct {
	// Immutable after New.
	binary string
	limits Limits
	log    *slog.Logger
	runner system.Runner
	kvm    func() error
	// elfKernel is Config.ELFKernel.
	elfKernel func(ctx context.Context, bzImage string) (string, error)
	// Waits of the ladders; fields so tests can shorten them.
	startTimeout time.Duration
	termWait     time.Duration
	killWait     time.Duration

	children vmm.Children // the VMMs this process started, reaped by it

	mu sync.Mutex
	// rel is the binary's release once relKnown. Guarded by mu.
	rel      Release
	relKnown bool
}

var (
	_ vmm.Driver = (*Driver)(nil)
	_ vmm.Finder = (*Driver)(nil)
)

// New returns a driver for cfg.
func New(cfg Config) *Driver {
	d := &Driver{binary: cfg.Binary, limits: cfg.Limits, log: cfg.Logger, runner: cfg.Runner, kvm: cfg.KVM, elfKernel: cfg.ELFKernel,
		startTimeout: 10 * time.Second, termWait: 5 * time.Second, killWait: 10 * time.Second}
	if d.binary == "" {
		d.binary = DefaultBinary
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.runner == nil {
		d.runner = system.ExecRunner{}
	}
	if d.kvm == nil {
		d.kvm = liveKVM
	}
	return d
}

// liveKVM checks that /dev/kvm opens read-write and is not the PVM module,
// under which stock guest kernels hang.
func liveKVM() error {
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return errors.New("/dev/kvm is the paravirtual kvm_pvm module, which Firecracker guests do not boot under")
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("/dev/kvm is not usable: %w", err)
	}
	return f.Close()
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "firecracker" }

// Features implements vmm.Driver: Firecracker always uses KVM and hybrid
// vsock.
func (d *Driver) Features() vmm.Features {
	return vmm.Features{Channel: vmm.ChannelHybridVsock, Accel: "kvm"}
}

func (d *Driver) lookBinary() (string, error) {
	p, err := exec.LookPath(d.binary)
	if err != nil {
		return "", api.Hinted(
			fmt.Errorf("firecracker binary %q not found: %w: %w", d.binary, err, api.ErrFailedPrecondition),
			"install Firecracker (github.com/firecracker-microvm/firecracker releases) or set firecracker_binary in the config")
	}
	return p, nil
}

// Version runs `firecracker --version`.
func (d *Driver) Version(ctx context.Context) (Release, error) {
	bin, err := d.lookBinary()
	if err != nil {
		return Release{}, err
	}
	out, err := system.Command(ctx, d.runner, bin, "--version")
	if err != nil {
		return Release{}, fmt.Errorf("read firecracker version: %w", err)
	}
	return ParseVersion(string(out))
}

// Probe implements vmm.Driver: the binary exists and is at least
// MinRelease. It does not check KVM (see ProbeKVM): an explicitly
// configured Firecracker without KVM fails at InstanceStart with
// Firecracker's own message.
func (d *Driver) Probe(ctx context.Context) error {
	r, err := d.Version(ctx)
	if err != nil {
		return err
	}
	if r.Less(MinRelease()) {
		return api.Hinted(fmt.Errorf("firecracker %s is older than the minimum %s: %w", r, MinRelease(), api.ErrFailedPrecondition),
			"install a newer Firecracker")
	}
	return nil
}

// ProbeKVM reports whether KVM can run Firecracker guests here.
func (d *Driver) ProbeKVM() error { return d.kvm() }

// Start implements vmm.Driver: it validates spec, starts Firecracker in its
// own session (stdout, the guest console, appended to spec.SerialLog;
// stderr to DIR/firecracker.log; a bzImage kernel replaced by its ELF
// vmlinux where the release needs it, see bootKernel), waits for the API socket, sends Plan's
// requests and InstanceStart. Any failure kills the process, removes its
// sockets, and returns the failing request with Firecracker's
// fault_message verbatim.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Handle, error) {
	paths := PathsFor(spec.Dir)
	if spec.CID == 0 {
		spec.CID = cidFor(spec.Name)
	}
	if err := validateSpec(spec, paths); err != nil {
		return vmm.Handle{}, err
	}
	if err := vmm.CheckFiles(spec); err != nil {
		return vmm.Handle{}, err
	}
	var err error
	if spec.Kernel, err = d.bootKernel(ctx, spec.Name, spec.Kernel); err != nil {
		return vmm.Handle{}, err
	}
	bin, err := d.lookBinary()
	if err != nil {
		return vmm.Handle{}, err
	}
	// The runtime dir is private (0700), so the sockets Firecracker
	// creates in it are reachable by root only whatever its umask.
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return vmm.Handle{}, fmt.Errorf("vm %q: create runtime dir: %w", spec.Name, err)
	}
	if err := os.Chmod(spec.Dir, 0o700); err != nil {
		return vmm.Handle{}, fmt.Errorf("vm %q: %w", spec.Name, err)
	}
	if err := d.claimDir(ctx, spec.Name, paths); err != nil {
		return vmm.Handle{}, err
	}
	for _, p := range []string{paths.Log, paths.Metrics} {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return vmm.Handle{}, fmt.Errorf("vm %q: create %s: %w", spec.Name, p, err)
		}
		f.Close()
	}
	console := spec.SerialLog
	if console == "" {
		console = paths.Log
	}
	outf, err := os.OpenFile(console, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return vmm.Handle{}, fmt.Errorf("vm %q: open console log: %w", spec.Name, err)
	}
	defer outf.Close()
	errf, err := os.OpenFile(paths.Log, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return vmm.Handle{}, fmt.Errorf("vm %q: open firecracker log: %w", spec.Name, err)
	}
	defer errf.Close()
	args := []string{"--api-sock", paths.API, "--id", spec.Name}
	fmt.Fprintf(errf, "--- kiln: %s: starting %s %s\n", time.Now().UTC().Format(time.RFC3339), bin, strings.Join(args, " "))
	logStart, _ := errf.Seek(0, io.SeekEnd)

	cmd := privateCommand(bin, args...)
	cmd.Stdout, cmd.Stderr = outf, errf
	done, err := d.children.Start(cmd)
	if err != nil {
		return vmm.Handle{}, fmt.Errorf("vm %q: start firecracker: %w", spec.Name, err)
	}
	pid := cmd.Process.Pid
	fail := func(err error) (vmm.Handle, error) {
		_ = cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(d.killWait):
			d.log.Error("firecracker did not exit after SIGKILL", "pid", pid)
		}
		for _, p := range []string{paths.API, paths.Vsock, paths.PIDFile} {
			os.Remove(p)
		}
		return vmm.Handle{}, fmt.Errorf("vm %q: %w", spec.Name, err)
	}
	exited := func() error {
		return fmt.Errorf("firecracker exited (%s) before it was ready: %s", cmd.ProcessState, vmm.LogTail("firecracker", paths.Log, logStart))
	}
	c := NewClient(paths.API)
	if err := c.WaitReady(ctx, d.startTimeout, done); err != nil {
		if errors.Is(err, errExited) {
			<-done
			err = exited()
		}
		return fail(err)
	}
	// The pid file is written before the VM is configured, so reconcile
	// (Find) sees this VMM even if the daemon dies from here on.
	if err := os.WriteFile(paths.PIDFile, []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		return fail(fmt.Errorf("write pid file: %w", err))
	}
	for _, r := range append(Plan(spec, paths, d.limits), ActionRequest(ActionInstanceStart)) {
		if err := c.Do(ctx, r, nil); err != nil {
			return fail(fmt.Errorf("configure firecracker: %w", err))
		}
	}
	st, err := readStartTicks(pid)
	if err != nil {
		<-done
		return fail(exited())
	}
	d.log.Info("firecracker started", "vm", spec.Name, "pid", pid, "cid", spec.CID)
	return vmm.Handle{Driver: d.Name(), PID: pid, StartTicks: st, Channel: vmm.ChannelHybridVsock,
		AgentSocket: paths.Vsock, CID: spec.CID, APISocket: paths.API, Accel: "kvm"}, nil
}

// cidFor derives a guest CID from a VM name when the daemon passes none.
// Each Firecracker VM has its own hybrid vsock socket, so CIDs need not
// be unique across VMs; it only must not be reserved.
func cidFor(string) uint32 { return 3 }

// claimDir refuses a runtime dir whose API socket answers, then removes
// stale sockets and pid file.
func (d *Driver) claimDir(ctx context.Context, name string, paths Paths) error {
	if _, err := os.Stat(paths.API); err == nil {
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := NewClient(paths.API).Version(cctx)
		cancel()
		if err == nil {
			return api.Errorf(api.ErrConflict, "vm %q: a VMM is already running in %s", name, paths.API)
		}
	}
	for _, p := range []string{paths.API, paths.Vsock, paths.PIDFile} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("vm %q: remove stale %s: %w", name, p, err)
		}
	}
	return nil
}
