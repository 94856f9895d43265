package daemon

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/api/client"
	"github.com/kilnvm/kiln/internal/config"
	"github.com/kilnvm/kiln/internal/disk"
	"github.com/kilnvm/kiln/internal/system"
	"github.com/kilnvm/kiln/internal/vmm/firecracker"
	"github.com/kilnvm/kiln/internal/vmm/qemu"
)

// Doctor checks the host for what kiln needs and says how to fix each
// problem. It needs no running daemon.
func Doctor(ctx context.Context, cfg config.Config) []api.Check {
	var out []api.Check
	add := func(name, status, detail, fix string) {
		out = append(out, api.Check{Name: name, Status: status, Detail: detail, Fix: fix})
	}

	// KVM and the accelerator the QEMU driver will use.
	_, pvm := os.Stat("/sys/module/kvm_pvm")
	f, kvmErr := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if kvmErr == nil {
		f.Close()
	}
	switch {
	case pvm == nil:
		add("kvm", "warn", "/dev/kvm is backed by the paravirtual PVM module: a stock guest kernel hangs under it, so QEMU runs guests with TCG (software emulation, much slower)",
			"run kiln on a host with hardware virtualisation (VT-x/AMD-V) and the kvm_intel or kvm_amd module")
	case kvmErr != nil:
		add("kvm", "warn", "KVM is not usable ("+kvmErr.Error()+"); QEMU runs guests with TCG (software emulation, much slower)",
			"enable virtualisation in the firmware and load kvm_intel or kvm_amd; check that /dev/kvm is read-writable")
	default:
		add("kvm", "pass", "/dev/kvm is usable", "")
	}

	// VMM drivers.
	qd := qemu.New(qemu.Config{Binary: cfg.QEMUBinary, Accel: cfg.Accel})
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := qd.Probe(vctx); err != nil {
		add("qemu", "fail", err.Error(), "apt-get install qemu-system-x86")
	} else {
		v, _ := qd.Version(vctx)
		ft := qd.Features()
		detail := fmt.Sprintf("%s, microvm machine, accel %s, agent channel %s", v, ft.Accel, ft.Channel)
		if ft.AccelNote != "" {
			detail += " (" + ft.AccelNote + ")"
		}
		add("qemu", "pass", detail, "")
	}
	out = append(out, qemuUserCheck(cfg)) // qemu_user.go
	fc := firecracker.New(firecracker.Config{Binary: cfg.FirecrackerBinary})
	fcErr, kvmFCErr := fc.Probe(vctx), fc.ProbeKVM()
	lo, hi := firecracker.TestedRange()
	fcRel, fcVerErr := fc.Version(vctx)
	switch r := fcRel; {
	case fcVerErr != nil:
		add("firecracker", "warn", "not usable: "+fcVerErr.Error(), "install Firecracker >= "+firecracker.MinRelease().String()+" on a KVM host")
	case fcErr != nil:
		add("firecracker", "warn", "not usable: "+fcErr.Error(), "install Firecracker >= "+firecracker.MinRelease().String())
	case r.Less(lo) || hi.Less(r):
		add("firecracker", "warn", fmt.Sprintf("%s (minimum %s; tested %s-%s)", r, firecracker.MinRelease(), lo, hi),
			"use a tested Firecracker release, or run the e2e suite against this one (docs/firecracker.md)")
	default:
		add("firecracker", "pass", fmt.Sprintf("%s (minimum %s; tested %s-%s)", r, firecracker.MinRelease(), lo, hi), "")
	}
	out = append(out, jailerChecks(vctx, cfg, hostJailerView(system.ExecRunner{}), fcRel, fcVerErr)...) // doctor_firecracker.go
	if kvmFCErr != nil {
		add("firecracker kvm", "warn", "Firecracker cannot run guests here: "+kvmFCErr.Error(),
			"use a host with hardware virtualisation (kvm_intel or kvm_amd) for Firecracker; QEMU works here")
	}
	add("vmm", "pass", pickVMM(cfg.VMM, fcErr, kvmFCErr).Summary, "")

	// Tools used to build kernels and images.
	tools := []struct{ bin, pkg, why string }{
		{"mkfs.ext4", "e2fsprogs", "build image and disk filesystems"},
		{"debugfs", "e2fsprogs", "inspect ext4 images"},
		{"resize2fs", "e2fsprogs", "grow disks"},
		{"dpkg-deb", "dpkg", "import .deb kernels"},
		{"apt-get", "apt", "`kiln kernel pull debian`"},
		{"debootstrap", "debootstrap", "`kiln image build --debootstrap`"},
	}
	for _, t := range tools {
		if p, err := exec.LookPath(t.bin); err == nil {
			add(t.bin, "pass", p, "")
		} else {
			status := "warn"
			if t.pkg == "e2fsprogs" {
				status = "fail"
			}
			add(t.bin, status, "not found: needed to "+t.why, "apt-get install "+t.pkg)
		}
	}

	// The agent injected into guests.
	if p, err := FindAgent(cfg); err == nil {
		add("kiln-agent", "pass", p, "")
	} else {
		add("kiln-agent", "fail", err.Error(), "run `make build`, or install kiln-agent to /usr/local/lib/kiln/")
	}

	// Disk: free space and the copy-on-write backend.
	l := cfg.Layout()
	dir := existingParent(l.StateDir)
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err == nil {
		free := int64(st.Bavail) * int64(st.Bsize)
		status, fix := "pass", ""
		if free < 5<<30 {
			status, fix = "warn", "free some space: each image and VM disk needs a few GiB"
		}
		add("disk space", status, fmt.Sprintf("%s free in %s", humanBytes(free), dir), fix)
	}
	chosen, probes := disk.Choose(ctx, dir, disk.Reflink{}, disk.SparseCopy{})
	for _, p := range probes {
		switch {
		case chosen != nil && p.Backend == chosen.Name():
			add("disk backend "+p.Backend, "pass", "in use for per-VM root disks", "")
		case p.Err != nil:
			add("disk backend "+p.Backend, "info", "skipped: "+p.Err.Error(), "")
		default:
			add("disk backend "+p.Backend, "info", "available", "")
		}
	}

	out = append(out, networkChecks(cfg)...) // doctor_network.go

	// The daemon socket.
	sock := cfg.SocketPath()
	cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
	defer ccancel()
	if v, err := client.New(sock).Version(cctx); err == nil {
		add("daemon", "pass", fmt.Sprintf("kiln %s (pid %d) answers on %s, vmm %s/%s; vmms: %s", v.Version, v.PID, sock, v.VMM, v.Accel, VMMSummary(v.VMMs)), "")
	} else if os.Geteuid() == 0 {
		add("daemon", "warn", "no daemon answers on "+sock, "it starts on the first kiln command run as root, or run `kiln daemon`")
	} else {
		add("daemon", "warn", "no daemon answers on "+sock+": "+firstLine(err.Error()), "ask root to run `kiln daemon`, and to add you to the kiln group")
	}
	return out
}

func existingParent(p string) string {
	for p != "/" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
		p = filepath.Dir(p)
	}
	return p
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
