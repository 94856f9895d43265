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
	"path/filepath"
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
	// Jailer, when set, launches every Firecracker through jailer in a
	// per-VM chroot as Jailer.UID:GID; nil runs Firecracker directly.
	Jailer *JailerConfig
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
	jailer    *JailerConfig // nil: no jailer
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
	_ vmm.Driver   = (*Driver)(nil)
	_ vmm.Finder   = (*Driver)(nil)
	_ vmm.Releaser = (*Driver)(nil)
)

// New returns a driver for cfg.
func New(cfg Config) *Driver {
	d := &Driver{binary: cfg.Binary, limits: cfg.Limits, log: cfg.Logger, runner: cfg.Runner, kvm: cfg.KVM, elfKernel: cfg.ELFKernel,
		jailer: cfg.Jailer, startTimeout: 10 * time.Second, termWait: 5 * time.Second, killWait: 10 * time.Second}
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
	return vmm.LookBinary("firecracker", d.binary,
		"install Firecracker (github.com/firecracker-microvm/firecracker releases) or set firecracker_binary in the config")
}

// Version is the binary's release, read once with `firecracker --version`
// (Probe, boot and `kiln doctor` all ask).
func (d *Driver) Version(ctx context.Context) (Release, error) {
	return d.release(ctx)
}

// readVersion runs `firecracker --version`; release caches its answer.
func (d *Driver) readVersion(ctx context.Context) (Release, error) {
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

// lookJailer finds the configured jailer binary.
func (d *Driver) lookJailer() (string, error) {
	return vmm.LookBinary("jailer", d.jailer.Binary,
		"install jailer from the same Firecracker release, or unset jailer_binary to run Firecracker directly")
}

// Probe implements vmm.Driver: the binary exists and is at least
// MinRelease, and so does the jailer when one is configured. It does not
// check KVM (see ProbeKVM): an explicitly configured Firecracker without
// KVM fails at InstanceStart with Firecracker's own message.
func (d *Driver) Probe(ctx context.Context) error {
	r, err := d.Version(ctx)
	if err != nil {
		return err
	}
	if d.jailer != nil {
		if _, err := d.lookJailer(); err != nil {
			return err
		}
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
// own session, directly or through jailer (see prepare), with stdout (the
// guest console) appended to spec.SerialLog and stderr to
// DIR/firecracker.log; a bzImage kernel is replaced by its ELF vmlinux
// where the release needs it (bootKernel). It waits for the API socket,
// sends Plan's requests and InstanceStart. Any failure kills the process,
// removes its sockets (and jail), and returns the failing request with
// Firecracker's fault_message verbatim.
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
	l, err := d.prepare(spec, paths, bin)
	if err != nil {
		return vmm.Handle{}, fmt.Errorf("vm %q: %w", spec.Name, err)
	}
	console := spec.SerialLog
	if console == "" {
		console = paths.Log
	}
	outf, err := os.OpenFile(console, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		l.undo()
		return vmm.Handle{}, fmt.Errorf("vm %q: open console log: %w", spec.Name, err)
	}
	defer outf.Close()
	errf, err := os.OpenFile(paths.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		l.undo()
		return vmm.Handle{}, fmt.Errorf("vm %q: open firecracker log: %w", spec.Name, err)
	}
	defer errf.Close()
	fmt.Fprintf(errf, "--- kiln: %s: starting %s\n", time.Now().UTC().Format(time.RFC3339), strings.Join(l.argv, " "))
	logStart, _ := errf.Seek(0, io.SeekEnd)

	cmd := exec.Command(l.argv[0], l.argv[1:]...)
	if d.jailer == nil {
		cmd = privateCommand(l.argv[0], l.argv[1:]...)
	}
	cmd.Stdout, cmd.Stderr = outf, errf
	done, err := d.children.Start(cmd)
	if err != nil {
		l.undo()
		return vmm.Handle{}, fmt.Errorf("vm %q: start %s: %w", spec.Name, filepath.Base(l.argv[0]), err)
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
		l.undo()
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
	// (Find) sees this VMM even if the daemon dies from here on. The pid
	// is Firecracker's also when jailed: jailer execs it in place.
	if err := os.WriteFile(paths.PIDFile, []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		return fail(fmt.Errorf("write pid file: %w", err))
	}
	for _, r := range append(Plan(l.spec, l.paths, d.limits), ActionRequest(ActionInstanceStart)) {
		if err := c.Do(ctx, r, nil); err != nil {
			return fail(fmt.Errorf("configure firecracker: %w", err))
		}
	}
	st, err := readStartTicks(pid)
	if err != nil {
		<-done
		return fail(exited())
	}
	d.log.Info("firecracker started", "vm", spec.Name, "pid", pid, "cid", spec.CID, "jailed", d.jailer != nil)
	return vmm.Handle{Driver: d.Name(), PID: pid, StartTicks: st, Channel: vmm.ChannelHybridVsock,
		AgentSocket: paths.Vsock, CID: spec.CID, APISocket: paths.API, Accel: "kvm"}, nil
}

// launch is how one VM's Firecracker is started.
type launch struct {
	argv []string // argv[0] is the binary: firecracker, or jailer
	// spec and paths are what the API requests name: the host's, or the
	// jail's when jailed.
	spec  vmm.Spec
	paths Paths
	undo  func() // removes what prepare made; safe to call once the VMM is gone
}

// prepare makes what Firecracker needs before it starts. Run directly, it
// is the log and metrics files in the runtime dir. Through jailer, it is
// the chroot: the VM's kernel, initrd and disks hard-linked in (so the
// chroot base must be on their filesystem), log and metrics files the
// jail user owns, and symlinks in the runtime dir to the sockets
// Firecracker will create in the chroot, so the daemon keeps reaching
// them at the usual short paths. Jailer runs under the daemon's umask,
// not 077: the directories it makes in the chroot (/dev, /dev/net) must
// stay searchable by the jail user. The sockets are private anyway: the
// chroot's parent directories are root's, mode 0700.
func (d *Driver) prepare(spec vmm.Spec, paths Paths, bin string) (launch, error) {
	if d.jailer == nil {
		for _, p := range []string{paths.Log, paths.Metrics} {
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				return launch{}, fmt.Errorf("create %s: %w", p, err)
			}
			f.Close()
		}
		return launch{argv: []string{bin, "--api-sock", paths.API, "--id", spec.Name}, spec: spec, paths: paths, undo: func() {}}, nil
	}
	cfg := *d.jailer
	jailer, err := d.lookJailer()
	if err != nil {
		return launch{}, err
	}
	args, err := JailerArgs(cfg, spec.Name, bin)
	if err != nil {
		return launch{}, err
	}
	j := JailFor(cfg.ChrootBase, bin, spec.Name)
	jspec, links := JailSpec(spec, j)
	files := make([]string, 0, len(links))
	for _, l := range links {
		if err := checkReadable(l, cfg.UID, cfg.GID); err != nil {
			return launch{}, err
		}
		files = append(files, l.Src)
	}
	if err := CheckSameFilesystem(cfg.ChrootBase, files...); err != nil {
		return launch{}, err
	}
	undo := func() {
		os.Remove(paths.API)
		os.Remove(paths.Vsock)
		if err := removeJail(j); err != nil {
			d.log.Warn("remove jail", "vm", spec.Name, "err", err)
		}
	}
	if err := os.MkdirAll(j.Root, 0o700); err != nil {
		return launch{}, fmt.Errorf("jailer: create chroot: %w", err)
	}
	if err := LinkInto(links, cfg.UID, cfg.GID); err != nil {
		undo()
		return launch{}, err
	}
	for _, p := range []string{j.Host.Log, j.Host.Metrics} {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err == nil {
			err = errors.Join(f.Chown(cfg.UID, cfg.GID), f.Close())
		}
		if err != nil {
			undo()
			return launch{}, fmt.Errorf("jailer: create %s: %w", p, err)
		}
	}
	for host, target := range map[string]string{paths.API: j.Host.API, paths.Vsock: j.Host.Vsock} {
		if err := os.Symlink(target, host); err != nil {
			undo()
			return launch{}, fmt.Errorf("jailer: link %s: %w", host, err)
		}
	}
	return launch{argv: append([]string{jailer}, args...), spec: jspec, paths: j.Inner, undo: undo}, nil
}

// jail is the jail of the VM named name, when this driver uses jailer.
func (d *Driver) jail(name string) (Jail, bool) {
	if d.jailer == nil {
		return Jail{}, false
	}
	return JailFor(d.jailer.ChrootBase, d.binary, name), true
}

// Release implements vmm.Releaser: once the VMM of the VM named name is
// gone, it removes the VM's chroot (and the hard links in it) and the
// cgroup jailer made. Without jailer there is nothing outside the
// runtime dir.
func (d *Driver) Release(name string) error {
	j, ok := d.jail(name)
	if !ok {
		return nil
	}
	return removeJail(j)
}

// cidFor derives a guest CID from a VM name when the daemon passes none.
// Each Firecracker VM has its own hybrid vsock socket, so CIDs need not
// be unique across VMs; it only must not be reserved.
func cidFor(string) uint32 { return 3 }

// claimDir refuses a runtime dir (or jail) whose API socket answers, then
// removes stale sockets, pid file and jail.
func (d *Driver) claimDir(ctx context.Context, name string, paths Paths) error {
	socks := []string{paths.API}
	j, jailed := d.jail(name)
	if jailed {
		socks = append(socks, j.Host.API)
	}
	for _, sock := range socks {
		if _, err := os.Stat(sock); err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := NewClient(sock).Version(cctx)
		cancel()
		if err == nil {
			return api.Errorf(api.ErrConflict, "vm %q: a VMM is already running in %s", name, sock)
		}
	}
	for _, p := range []string{paths.API, paths.Vsock, paths.PIDFile} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("vm %q: remove stale %s: %w", name, p, err)
		}
	}
	if jailed {
		if err := removeJail(j); err != nil {
			return fmt.Errorf("vm %q: remove stale jail: %w", name, err)
		}
	}
	return nil
}
