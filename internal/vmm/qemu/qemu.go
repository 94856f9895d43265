// Package qemu runs kiln VMs under QEMU's microvm machine: it builds the
// command line from a vmm.Spec, starts QEMU detached in its own session,
// watches it through QMP and /proc, and stops it by a ladder of ACPI
// power-down, SIGTERM and SIGKILL.
//
// Whether QEMU uses KVM or TCG, and whether the guest agent is reached over
// vhost-vsock or virtio-serial, is decided once in New from a HostView, by a
// pure function that is table-tested for every host shape.
package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/system"
	"github.com/kilnvm/kiln/internal/vmm"
)

// DefaultBinary is the QEMU looked up on PATH when Config.Binary is empty.
const DefaultBinary = "qemu-system-x86_64"

// Config configures a Driver.
type Config struct {
	// Binary is the QEMU executable: a path, or a name looked up on PATH.
	// Empty means DefaultBinary.
	Binary string
	// Accel is "auto" (or empty), "kvm" or "tcg".
	Accel string
	// Logger receives the host summary line and lifecycle events; nil
	// discards them.
	Logger *slog.Logger
	// Host is how the driver reads the host; the zero value means LiveHost().
	Host HostView
	// Runner runs QEMU's short-lived queries (--version, -M help); nil
	// means system.ExecRunner. The VMM itself is started with os/exec
	// directly, because it must outlive the call in its own session.
	Runner system.Runner
}

// Driver implements vmm.Driver with QEMU. It is safe for concurrent use.
type Driver struct {
	// Immutable after New.
	binary string
	log    *slog.Logger
	runner system.Runner
	dec    decision
	decErr error // non-nil: the configured accel cannot be honoured here
	// Waits of the stop ladder and of start readiness. Fields rather than
	// constants so in-package tests can shorten them.
	termWait     time.Duration // after SIGTERM
	killWait     time.Duration // after SIGKILL
	startTimeout time.Duration // upper bound for QEMU to answer on QMP

	children vmm.Children // the VMMs this process started, reaped by it

	mu sync.Mutex
	// release caches the QEMU version once read. Guarded by mu.
	release *Release
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a driver for cfg. It reads the host once, decides the
// accelerator and agent channel, and logs one summary line. A configuration
// the host cannot honour (accel kvm without usable KVM) does not fail here:
// Probe and Start return the error, and Features carries it as the note.
func New(cfg Config) *Driver {
	d := &Driver{
		binary:       cfg.Binary,
		log:          cfg.Logger,
		runner:       cfg.Runner,
		termWait:     5 * time.Second,
		killWait:     10 * time.Second,
		startTimeout: 30 * time.Second,
	}
	if d.binary == "" {
		d.binary = DefaultBinary
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.runner == nil {
		d.runner = system.ExecRunner{}
	}
	host := cfg.Host
	if host.KVM == nil && host.PVM == nil && host.VhostVsock == nil {
		host = LiveHost()
	}
	d.dec, d.decErr = decideAccel(host.read(), cfg.Accel)
	if d.decErr != nil {
		d.log.Warn(d.dec.Summary, "err", d.decErr)
	} else if d.dec.Note != "" {
		d.log.Info(d.dec.Summary, "note", d.dec.Note)
	} else {
		d.log.Info(d.dec.Summary)
	}
	return d
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "qemu" }

// Features implements vmm.Driver: the channel and accelerator decided in
// New. When the configured accel cannot be honoured, Accel is empty and
// AccelNote holds the reason.
func (d *Driver) Features() vmm.Features {
	if d.decErr != nil {
		return vmm.Features{AccelNote: d.decErr.Error()}
	}
	return vmm.Features{Channel: d.dec.Channel, Accel: d.dec.Accel, AccelNote: d.dec.Note}
}

// lookBinary resolves the QEMU executable.
func (d *Driver) lookBinary() (string, error) {
	return vmm.LookBinary("qemu", d.binary, "install it (apt-get install qemu-system-x86) or set the qemu binary path in the config")
}

// Version returns QEMU's version ("7.2.22"), for `kiln doctor`.
func (d *Driver) Version(ctx context.Context) (string, error) {
	r, err := d.qemuRelease(ctx)
	if err != nil {
		return "", err
	}
	return r.String(), nil
}

// qemuRelease reads and caches the QEMU version.
func (d *Driver) qemuRelease(ctx context.Context) (Release, error) {
	d.mu.Lock()
	cached := d.release
	d.mu.Unlock()
	if cached != nil {
		return *cached, nil
	}
	bin, err := d.lookBinary()
	if err != nil {
		return Release{}, err
	}
	out, err := system.Command(ctx, d.runner, bin, "--version")
	if err != nil {
		return Release{}, fmt.Errorf("read qemu version: %w", err)
	}
	r, err := ParseVersion(string(out))
	if err != nil {
		return Release{}, fmt.Errorf("read qemu version of %s: %w", bin, err)
	}
	d.mu.Lock()
	d.release = &r
	d.mu.Unlock()
	return r, nil
}

// Probe implements vmm.Driver: the configured accel works here, the binary
// exists, reports a version, and knows the microvm machine.
func (d *Driver) Probe(ctx context.Context) error {
	if d.decErr != nil {
		return d.decErr
	}
	if _, err := d.qemuRelease(ctx); err != nil {
		return err
	}
	bin, err := d.lookBinary()
	if err != nil {
		return err
	}
	out, err := system.Command(ctx, d.runner, bin, "-M", "help")
	if err != nil {
		return fmt.Errorf("list qemu machines: %w", err)
	}
	if !hasMachine(string(out), "microvm") {
		return api.Hinted(
			fmt.Errorf("%s does not support the microvm machine: %w", bin, api.ErrFailedPrecondition),
			"use a QEMU built with microvm (Debian's qemu-system-x86 has it)")
	}
	return nil
}

// hasMachine reports whether `-M help` output lists machine name.
func hasMachine(help, name string) bool {
	for _, line := range strings.Split(help, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			return true
		}
	}
	return false
}
