package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/config"
	"github.com/kilnvm/kiln/internal/store"
	"github.com/kilnvm/kiln/internal/vmm"
	"github.com/kilnvm/kiln/internal/vmm/firecracker"
	"github.com/kilnvm/kiln/internal/vmm/qemu"
)

// vmmNames are the VMM names a VM may ask for with `--vmm`; "auto" (or
// nothing) takes the daemon's default.
func vmmNames() []string { return []string{"qemu", "firecracker"} }

// driverSet holds every VMM driver that probed OK on this daemon, the
// default one (what `vmm` in the config picked), and why each other
// known driver is not usable here. Immutable after pickDrivers.
type driverSet struct {
	def    vmm.Driver
	usable map[string]vmm.Driver
	down   map[string]error // name → why it did not probe OK
	// versions are the usable drivers' versions, read once (vmminfo.go).
	versions map[string]string
}

// forRequest resolves the VMM a create asks for: "" or "auto" is the
// default; an unknown name is bad_request; a known driver that did not
// probe OK is failed_precondition carrying the probe's reason.
func (s driverSet) forRequest(name string) (vmm.Driver, error) {
	if name == "" || name == "auto" {
		return s.def, nil
	}
	if drv, ok := s.usable[name]; ok {
		return drv, nil
	}
	if why, ok := s.down[name]; ok {
		return nil, fmt.Errorf("vmm %q is not usable on this daemon: %v: %w", name, why, api.ErrFailedPrecondition)
	}
	return nil, api.Errorf(api.ErrBadRequest, "unknown vmm %q (want auto, %s)", name, strings.Join(vmmNames(), " or "))
}

// forVM is the driver of an existing VM: the one recorded at create (a
// record without one predates per-VM selection and takes the default).
// A driver that is not usable on this daemon is failed_precondition.
func (s driverSet) forVM(v store.VM) (vmm.Driver, error) {
	if v.Driver == "" {
		return s.def, nil
	}
	if drv, ok := s.usable[v.Driver]; ok {
		return drv, nil
	}
	why := s.down[v.Driver]
	if why == nil {
		why = errors.New("this daemon has no such driver")
	}
	return nil, fmt.Errorf("vm %q runs on the %s VMM, which is not usable on this daemon: %v: %w", v.Name, v.Driver, why, api.ErrFailedPrecondition)
}

// names lists the usable drivers, sorted, for the log.
func (s driverSet) names() []string {
	out := make([]string, 0, len(s.usable))
	for n := range s.usable {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// driverFor is the driver that runs v (see driverSet.forVM).
func (d *Daemon) driverFor(v store.VM) (vmm.Driver, error) {
	return d.drivers.forVM(v)
}

// pickDrivers probes every VMM and picks the default: "firecracker" must
// probe (its binary, at least firecracker.MinRelease); "auto" takes
// Firecracker when it probes and KVM is usable (see pickVMM), else QEMU.
// The default failing its probe fails Open, as before; another driver
// failing only makes it unavailable for `--vmm`, with its reason.
// elfKernel extracts an ELF vmlinux for Firecracker releases that need one.
func pickDrivers(ctx context.Context, cfg config.Config, logger *slog.Logger, elfKernel func(context.Context, string) (string, error)) (driverSet, error) {
	s := driverSet{usable: map[string]vmm.Driver{}, down: map[string]error{}}
	fc := firecracker.New(firecracker.Config{Binary: cfg.FirecrackerBinary, Logger: logger, ELFKernel: elfKernel, Jailer: jailerConfig(cfg), Limits: firecrackerLimits(cfg)})
	fcErr := fc.Probe(ctx)
	defName := "qemu"
	if cfg.VMM == "firecracker" || cfg.VMM == "auto" {
		choice := pickVMM(cfg.VMM, fcErr, fc.ProbeKVM())
		logger.Info("vmm: " + choice.Summary)
		if choice.Err != nil {
			return s, fmt.Errorf("firecracker driver: %w", choice.Err)
		}
		defName = choice.Name
	}
	if fcErr == nil {
		s.usable["firecracker"] = fc
	} else {
		s.down["firecracker"] = fcErr
	}
	q := qemu.New(qemu.Config{Binary: cfg.QEMUBinary, Accel: cfg.Accel, Logger: logger})
	if err := q.Probe(ctx); err != nil {
		if defName == "qemu" {
			return s, fmt.Errorf("qemu driver: %w", err)
		}
		s.down["qemu"] = err
	} else {
		s.usable["qemu"] = q
	}
	s.def = s.usable[defName]
	s.versions = driverVersions(ctx, s.usable)
	for name, why := range s.down {
		logger.Info("vmm: "+name+" not available for --vmm", "reason", why.Error())
	}
	return s, nil
}

// firecrackerLimits are the rate limits of every Firecracker drive and NIC.
func firecrackerLimits(cfg config.Config) firecracker.Limits {
	const mib = 1 << 20
	return firecracker.Limits{
		Drive: firecracker.PerSecond(int64(cfg.FirecrackerDriveMiBps)*mib, int64(cfg.FirecrackerDriveIOPS)),
		NIC:   firecracker.PerSecond(int64(cfg.FirecrackerNetMiBps)*mib, 0),
	}
}

// jailerConfig is the Firecracker driver's jailer settings, nil when
// jailer_binary is unset (Firecracker then runs directly as root).
func jailerConfig(cfg config.Config) *firecracker.JailerConfig {
	if cfg.JailerBinary == "" {
		return nil
	}
	return &firecracker.JailerConfig{Binary: cfg.JailerBinary, UID: cfg.JailerUID, GID: cfg.JailerGID,
		ChrootBase: cfg.ChrootBase(), Cgroups: cfg.JailerCgroups}
}

// releaseVMM lets v's driver remove what it kept outside the runtime dir
// (vmm.Releaser) once v's VMM is gone. A failure is logged, not returned:
// the VM's next start or its delete tries again.
func (d *Daemon) releaseVMM(drv vmm.Driver, name string) {
	if r, ok := drv.(vmm.Releaser); ok {
		if err := r.Release(name); err != nil {
			d.logger.Warn("release vmm resources", "vm", name, "driver", drv.Name(), "err", err)
		}
	}
}
