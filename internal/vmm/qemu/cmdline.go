package qemu

import (
	"fmt"
	"hash/fnv"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/vmm"
)

// File names inside a VM's runtime directory (vmm.Spec.Dir).
const (
	QMPSocketName   = "qmp.sock"
	AgentSocketName = "agent.sock"
	PIDFileName     = "qemu.pid"
	LogFileName     = "qemu.log"
	// ConsoleLogName is used when the spec names no SerialLog.
	ConsoleLogName = "console.log"
)

// Paths are the files QEMU uses for one VM.
type Paths struct {
	QMP     string // QMP control socket
	Agent   string // virtio-serial agent socket (serial channel only)
	PIDFile string
	Log     string // QEMU's own stdout and stderr
	Console string // default guest console log
}

// PathsFor returns the Paths inside a VM's runtime directory.
func PathsFor(dir string) Paths {
	return Paths{
		QMP:     filepath.Join(dir, QMPSocketName),
		Agent:   filepath.Join(dir, AgentSocketName),
		PIDFile: filepath.Join(dir, PIDFileName),
		Log:     filepath.Join(dir, LogFileName),
		Console: filepath.Join(dir, ConsoleLogName),
	}
}

// Release is a QEMU version.
type Release struct{ Major, Minor, Patch int }

func (r Release) String() string { return fmt.Sprintf("%d.%d.%d", r.Major, r.Minor, r.Patch) }

// AtLeast reports whether r is major.minor or newer.
func (r Release) AtLeast(major, minor int) bool {
	return r.Major > major || (r.Major == major && r.Minor >= minor)
}

// runWithUser reports whether this QEMU drops privileges with
// `-run-with user=` (9.1 added it and deprecated `-runas`).
func (r Release) runWithUser() bool { return r.AtLeast(9, 1) }

var versionRE = regexp.MustCompile(`QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?`)

// ParseVersion reads the output of `qemu-system-x86_64 --version`.
func ParseVersion(out string) (Release, error) {
	m := versionRE.FindStringSubmatch(out)
	if m == nil {
		first, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
		return Release{}, fmt.Errorf("unrecognised qemu --version output %q", first)
	}
	var r Release
	r.Major, _ = strconv.Atoi(m[1])
	r.Minor, _ = strconv.Atoi(m[2])
	if m[3] != "" {
		r.Patch, _ = strconv.Atoi(m[3])
	}
	return r, nil
}

// CIDFor derives a guest vsock CID from a VM name, for callers that leave
// Spec.CID zero. It is deterministic (the same VM gets the same CID after a
// daemon restart) and never one of the reserved CIDs 0-2 or VMADDR_CID_ANY;
// distinct names can collide, which is why the daemon should pass its own.
func CIDFor(name string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return 3 + h.Sum32()%(1<<31-3)
}

// optPath escapes a value for QEMU's key=value option syntax, in which a
// comma separates options and a doubled comma stands for a literal one.
func optPath(p string) string { return strings.ReplaceAll(p, ",", ",,") }

// Cmdline returns QEMU's arguments (without the binary) for spec. It is a
// pure function of its inputs: paths from PathsFor(spec.Dir), accel and
// channel from the driver's decision, and the QEMU release, which decides
// how privileges are dropped. For the vsock channel spec.CID must be set.
func Cmdline(spec vmm.Spec, paths Paths, accel, channel string, qemu Release) []string {
	cpu := "max"
	cpus := spec.CPUs
	// Under TCG the guest's clocks come from icount (virtual time derived
	// from the instruction count) rather than the host's: a stock kernel
	// on microvm has no HPET or PM timer, so it calibrates the TSC and the
	// local APIC timer against the PIT, and with real-time clocks on a
	// loaded host that calibration fails and the guest hangs at "tsc:
	// Marking TSC unstable" or stalls with its APIC timer disabled. With
	// icount the calibration always agrees. It costs multi-threaded TCG
	// (thread=multi) and roughly 15-20% of boot time.
	accelArgs := []string{"-accel", "tcg", "-icount", "shift=auto"}
	if accel == AccelKVM {
		cpu, accelArgs = "host", []string{"-accel", "kvm"}
	} else {
		// icount runs every vCPU on one host thread, so more vCPUs buy no
		// speed, and secondary CPUs then fail to calibrate their delay loop
		// (a stock kernel took 16 s of guest time to bring up a second one).
		cpus = tcgCPUs
	}
	serialLog := spec.SerialLog
	if serialLog == "" {
		serialLog = paths.Console
	}
	args := []string{
		"-name", spec.Name,
		// pit/pic/rtc: a stock distro kernel expects the legacy timer and
		// interrupt controller; Firecracker-style minimal kernels do not.
		"-M", "microvm,pit=on,pic=on,rtc=on",
	}
	args = append(args, accelArgs...)
	args = append(args,
		"-cpu", cpu,
		"-m", strconv.Itoa(spec.MemoryMiB),
		"-smp", strconv.Itoa(cpus),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", spec.Kernel,
	)
	if spec.Initrd != "" {
		args = append(args, "-initrd", spec.Initrd)
	}
	args = append(args, "-append", spec.Cmdline,
		"-chardev", "file,id=console,path="+optPath(serialLog),
		"-serial", "chardev:console",
	)
	for i, d := range spec.Disks {
		drive := fmt.Sprintf("id=disk%d,file=%s,format=raw,if=none", i, optPath(d.Path))
		if d.ReadOnly {
			drive += ",readonly=on"
		}
		args = append(args, "-drive", drive,
			"-device", fmt.Sprintf("virtio-blk-device,drive=disk%d", i))
	}
	for i, n := range spec.NICs {
		dev := fmt.Sprintf("virtio-net-device,netdev=net%d", i)
		if n.MAC != "" {
			dev += ",mac=" + n.MAC
		}
		netdev := fmt.Sprintf("tap,id=net%d,ifname=%s,script=no,downscript=no", i, n.TAP)
		if n.User { // slirp: guest 10.0.2.15, gateway 10.0.2.2, DNS 10.0.2.3
			netdev = fmt.Sprintf("user,id=net%d", i)
		}
		args = append(args, "-netdev", netdev, "-device", dev)
	}
	switch channel {
	case vmm.ChannelVsock:
		args = append(args, "-device", fmt.Sprintf("vhost-vsock-device,guest-cid=%d", spec.CID))
	default:
		args = append(args,
			"-device", "virtio-serial-device",
			"-chardev", "socket,id=agent,path="+optPath(paths.Agent)+",server=on,wait=off",
			"-device", "virtserialport,chardev=agent,name="+proto.SerialPortName)
	}
	args = append(args,
		"-qmp", "unix:"+optPath(paths.QMP)+",server=on,wait=off",
		"-pidfile", paths.PIDFile,
	)
	if spec.RunAsUID != 0 || spec.RunAsGID != 0 {
		user := fmt.Sprintf("%d:%d", spec.RunAsUID, spec.RunAsGID)
		if qemu.runWithUser() {
			args = append(args, "-run-with", "user="+user)
		} else {
			args = append(args, "-runas", user)
		}
	}
	return args
}

// tcgCPUs is the vCPU count of every TCG guest (see Cmdline).
const tcgCPUs = 1

// validateSpec checks what Cmdline relies on, so that a bad spec fails with
// a clear, classed error before any process starts. It does not touch the
// file system; Start checks the files.
func validateSpec(spec vmm.Spec, paths Paths, channel string) error {
	if err := spec.Check(255, paths.QMP, paths.Agent); err != nil {
		return err
	}
	if channel == vmm.ChannelVsock && spec.CID < 3 {
		return api.Errorf(api.ErrBadRequest, "vm %q: vsock cid %d is reserved (want >= 3)", spec.Name, spec.CID)
	}
	return nil
}
