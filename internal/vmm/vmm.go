// Package vmm defines the contract between the kiln daemon and a virtual
// machine monitor. Implementations live in vmm/qemu and vmm/firecracker.
//
// A driver turns a Spec into a running, detached VMM process and back: it
// knows nothing of images, networks or the guest agent. The daemon owns the
// ordering (disks before Start, agent poweroff before Stop) and the state.
package vmm

import (
	"context"
	"time"
)

// Channel kinds: how the host reaches the guest agent.
const (
	// ChannelSerial: a Unix socket on the host connected to a virtio-serial
	// port in the guest; the stream carries a yamux session.
	ChannelSerial = "serial"
	// ChannelVsock: AF_VSOCK from the host (vhost-vsock), by guest CID.
	ChannelVsock = "vsock"
	// ChannelHybridVsock: Firecracker's Unix socket + "CONNECT <port>\n".
	ChannelHybridVsock = "hybrid-vsock"
)

// Spec is everything a driver needs to boot one VM. Paths are absolute.
type Spec struct {
	Name      string
	Dir       string // per-VM runtime directory: sockets, pid file, logs
	CPUs      int
	MemoryMiB int
	Kernel    string
	Initrd    string
	Cmdline   string
	Disks     []Disk // Disks[0] is the root disk (/dev/vda in the guest)
	NICs      []NIC
	// SerialLog receives the guest console.
	SerialLog string
	// RunAsUID/RunAsGID, when non-zero, drop the VMM's privileges.
	RunAsUID, RunAsGID int
	// CID is the guest's vsock context id (>= 3) for drivers whose agent
	// channel is vsock. Zero lets the driver derive one from Name; the
	// daemon, which knows every running VM, should pass a unique one. The
	// chosen CID is returned in Handle.CID.
	CID uint32
}

// Disk is a block device given to the guest, in order (vda, vdb, ...).
type Disk struct {
	Path     string
	ReadOnly bool
}

// NIC is a network interface backed by a host TAP device, or, with User,
// by the VMM's user-mode network stack (no TAP, no privileges; QEMU only).
type NIC struct {
	TAP  string
	MAC  string
	User bool // user-mode networking (QEMU -netdev user); TAP is empty
}

// Handle identifies a running VMM across daemon restarts; it is stored in
// the VM's handles.json. It must be JSON-serialisable.
type Handle struct {
	Driver string `json:"driver"`
	PID    int    `json:"pid"`
	// StartTicks is the process start time (field 22 of /proc/PID/stat), so
	// a recycled pid is never mistaken for the VMM.
	StartTicks uint64 `json:"start_ticks"`
	// Channel is one of the Channel* constants; AgentSocket is the host
	// socket for serial and hybrid vsock, CID the guest CID for vsock.
	Channel     string `json:"channel"`
	AgentSocket string `json:"agent_socket,omitempty"`
	CID         uint32 `json:"cid,omitempty"`
	// APISocket is the VMM's control socket (QMP, Firecracker API), if any.
	APISocket string `json:"api_socket,omitempty"`
	// Accel records how the VM is accelerated ("kvm", "tcg").
	Accel string `json:"accel,omitempty"`
}

// Features describes what a driver offers; the daemon reads it instead of
// asking the driver's name.
type Features struct {
	// Channel is the agent channel kind this driver sets up.
	Channel string
	// Accel is the acceleration Start will use ("kvm" or "tcg").
	Accel string
	// AccelNote explains the choice when it is not the best one, e.g. why
	// KVM is not used. Shown by `kiln doctor` and on create.
	AccelNote string
}

// Driver runs VMMs. Implementations must be safe for concurrent use.
type Driver interface {
	// Name is the driver's config name ("qemu", "firecracker").
	Name() string
	// Probe reports whether the driver can run on this host; a non-nil error
	// says why not and what to do.
	Probe(ctx context.Context) error
	Features() Features
	// Start launches the VMM for spec detached from the caller (its own
	// session; a daemon restart must not kill it) and returns once the VMM
	// process is up (not once the guest has booted). On error nothing is
	// left running.
	Start(ctx context.Context, spec Spec) (Handle, error)
	// Alive reports whether the VMM behind h is still running.
	Alive(h Handle) bool
	// Stop ends the VMM: it asks the VMM to shut the guest down where it can,
	// waits up to grace for the process to exit, then sends SIGTERM, waits
	// again, then SIGKILL. It returns once the process is gone. The daemon
	// asks the guest agent to power off before calling Stop.
	Stop(ctx context.Context, h Handle, grace time.Duration) error
	// Kill ends the VMM at once with SIGKILL and waits for it to be gone.
	Kill(ctx context.Context, h Handle) error
}

// Finder is implemented by drivers that can find a VMM they started from
// its runtime directory alone. Reconcile uses it for a VMM whose handle was
// never recorded: a daemon killed between Start and writing handles.json.
type Finder interface {
	Find(dir string) (Handle, bool)
}

// Releaser is implemented by drivers that keep something for a VM outside
// its runtime directory while the VMM runs (Firecracker's jailer chroot and
// cgroup). The daemon calls Release once the VM's VMM is gone: after a
// stop, a kill, a failed create, or when it finds the VMM dead. Release is
// idempotent.
type Releaser interface {
	Release(name string) error
}
