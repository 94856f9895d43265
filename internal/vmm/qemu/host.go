package qemu

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/vmm"
)

// Acceleration modes, as written in the config and in Handle.Accel.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// HostView is how the driver reads the host when it decides how to run
// QEMU. Production code uses LiveHost; tests pass fakes, so every host shape
// can be checked without owning such a host. A nil function reads as
// "absent".
type HostView struct {
	// KVM returns nil when /dev/kvm exists and opens read-write, else the
	// error that stopped it (fs.ErrNotExist, fs.ErrPermission, ...).
	KVM func() error
	// PVM reports whether KVM is the paravirtual kvm_pvm module
	// (/sys/module/kvm_pvm exists), under which stock kernels hang.
	PVM func() bool
	// VhostVsock reports whether /dev/vhost-vsock exists.
	VhostVsock func() bool
}

// LiveHost reads the real host.
func LiveHost() HostView {
	return HostView{
		KVM: func() error {
			f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
			if err != nil {
				return err
			}
			return f.Close()
		},
		PVM:        func() bool { return exists("/sys/module/kvm_pvm") },
		VhostVsock: func() bool { return exists("/dev/vhost-vsock") },
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// hostFacts is a HostView read once, so the decision over it is pure.
type hostFacts struct {
	kvmErr     error // nil: /dev/kvm is usable
	pvm        bool
	vhostVsock bool
}

func (v HostView) read() hostFacts {
	f := hostFacts{kvmErr: fs.ErrNotExist}
	if v.KVM != nil {
		f.kvmErr = v.KVM()
	}
	if v.PVM != nil {
		f.pvm = v.PVM()
	}
	if v.VhostVsock != nil {
		f.vhostVsock = v.VhostVsock()
	}
	return f
}

// kvmState names the KVM situation for the summary line.
func (f hostFacts) kvmState() string {
	switch {
	case f.kvmErr == nil && f.pvm:
		return "pvm-only"
	case f.kvmErr == nil:
		return "usable"
	case errors.Is(f.kvmErr, fs.ErrNotExist):
		return "absent"
	case errors.Is(f.kvmErr, fs.ErrPermission):
		return "no-access"
	}
	return "error"
}

// decision is what the driver does on this host.
type decision struct {
	Accel   string // AccelKVM or AccelTCG
	Channel string // vmm.ChannelVsock or vmm.ChannelSerial
	// Note explains a choice that is not the best one (shown by doctor).
	Note string
	// Summary is the one log line describing the host and the choice.
	Summary string
}

// pvmNote is shared by the fallback note and the error for requested kvm.
const pvmNote = "KVM on this host is PVM-only (kvm_pvm): a stock kernel hangs right after decompression under it"

// decideAccel picks the accelerator and the agent channel from the host
// facts and the configured accel ("", "auto", "kvm", "tcg"). It is pure: the
// table test covers every host shape. An error means the configuration
// cannot be honoured here; it is classed (bad request for an unknown mode,
// failed precondition for kvm on a host without usable KVM).
func decideAccel(f hostFacts, requested string) (decision, error) {
	d := decision{}
	kvmOK := f.kvmErr == nil && !f.pvm
	switch requested {
	case "", AccelAuto:
		switch {
		case kvmOK:
			d.Accel = AccelKVM
		case f.kvmErr == nil && f.pvm:
			d.Accel = AccelTCG
			d.Note = pvmNote + ", so QEMU uses TCG (software emulation, much slower, one vCPU per guest); `kiln doctor` says more"
		default:
			d.Accel = AccelTCG
			d.Note = fmt.Sprintf("KVM is not usable (/dev/kvm: %v), so QEMU uses TCG (software emulation, much slower, one vCPU per guest); `kiln doctor` says more", errText(f.kvmErr))
		}
	case AccelTCG:
		d.Accel = AccelTCG
	case AccelKVM:
		switch {
		case kvmOK:
			d.Accel = AccelKVM
		case f.kvmErr == nil && f.pvm:
			return decision{Summary: summary(f, "error")}, api.Errorf(api.ErrFailedPrecondition,
				"qemu accel kvm requested, but %s; set accel to auto or tcg (see `kiln doctor`)", pvmNote)
		default:
			return decision{Summary: summary(f, "error")}, api.Errorf(api.ErrFailedPrecondition,
				"qemu accel kvm requested, but /dev/kvm is not usable: %s; set accel to auto or tcg (see `kiln doctor`)", errText(f.kvmErr))
		}
	default:
		return decision{Summary: summary(f, "error")}, api.Errorf(api.ErrBadRequest,
			"unknown qemu accel %q: want auto, kvm or tcg", requested)
	}

	// vhost-vsock is a kernel vhost device: its virtqueue kicks travel
	// through ioeventfds, which QEMU wires only under KVM (virtio-mmio turns
	// them off otherwise), so under TCG the agent talks over virtio-serial.
	d.Channel = vmm.ChannelSerial
	if f.vhostVsock && d.Accel == AccelKVM {
		d.Channel = vmm.ChannelVsock
	}
	d.Summary = summary(f, d.Accel+"/"+d.Channel)
	return d, nil
}

func summary(f hostFacts, ret string) string {
	vs := "absent"
	if f.vhostVsock {
		vs = "present"
	}
	return fmt.Sprintf("qemu: [kvm=%s vhost-vsock=%s ret=%s]", f.kvmState(), vs, ret)
}

func errText(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "does not exist"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	}
	return err.Error()
}
