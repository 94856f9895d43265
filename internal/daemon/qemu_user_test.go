package daemon

import (
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/config"
	"github.com/kilnvm/kiln/internal/vmm"
	"github.com/kilnvm/kiln/internal/vmm/qemu"
)

// TestQEMURunAs: qemu_uid/qemu_gid reach the QEMU driver's spec, and so
// its argv in the form of the QEMU release; other drivers' specs and the
// root default carry no run-as user.
func TestQEMURunAs(t *testing.T) {
	unpriv := config.Default()
	unpriv.QEMUUID, unpriv.QEMUGID = 65534, 65533
	base := vmm.Spec{Name: "a", Dir: "/run/kiln/vm/x", CPUs: 1, MemoryMiB: 256, Kernel: "/k"}
	argv := func(s vmm.Spec, rel qemu.Release) string {
		return " " + strings.Join(qemu.Cmdline(s, qemu.PathsFor(s.Dir), qemu.AccelTCG, vmm.ChannelSerial, rel), " ") + " "
	}
	for _, c := range []struct {
		name     string
		cfg      config.Config
		driver   string
		uid, gid int
	}{
		{"qemu unprivileged", unpriv, "qemu", 65534, 65533},
		{"qemu as root", config.Default(), "qemu", 0, 0},
		{"firecracker has its jailer", unpriv, "firecracker", 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := base
			qemuRunAs(c.cfg, c.driver, &s)
			if s.RunAsUID != c.uid || s.RunAsGID != c.gid {
				t.Fatalf("run as %d:%d, want %d:%d", s.RunAsUID, s.RunAsGID, c.uid, c.gid)
			}
			old, cur := argv(s, qemu.Release{Major: 7, Minor: 2}), argv(s, qemu.Release{Major: 9, Minor: 1})
			if c.uid == 0 {
				if strings.Contains(old+cur, "-runas") || strings.Contains(old+cur, "-run-with") {
					t.Fatalf("root VMM drops privileges:%s", old)
				}
				return
			}
			if !strings.Contains(old, " -runas 65534:65533 ") || !strings.Contains(cur, " -run-with user=65534:65533 ") || strings.Contains(cur, "-runas") {
				t.Fatalf("argv:\n7.2:%s\n9.1:%s", old, cur)
			}
		})
	}
}

func TestQEMUUserDoctorLine(t *testing.T) {
	c := qemuUserCheck(config.Default())
	if c.Status != "info" || !strings.Contains(c.Detail, "QEMU runs as root") || !strings.Contains(c.Detail, "qemu_uid") {
		t.Fatalf("root: %+v", c)
	}
	cfg := config.Default()
	cfg.QEMUUID, cfg.QEMUGID = 65534, 65534
	c = qemuUserCheck(cfg)
	if c.Status != "pass" || !strings.Contains(c.Detail, "uid 65534") || !strings.Contains(c.Detail, "gid 65534") {
		t.Fatalf("unprivileged: %+v", c)
	}
}
