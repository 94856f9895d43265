package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/config"
)

func TestDoctorChecksAndFixes(t *testing.T) {
	cfg := config.Default()
	dir := t.TempDir()
	cfg.StateDir, cfg.RunDir, cfg.CacheDir = filepath.Join(dir, "state"), filepath.Join(dir, "run"), filepath.Join(dir, "cache")
	cfg.AgentPath = filepath.Join(dir, "no-agent")
	checks := Doctor(context.Background(), cfg)
	byName := map[string]string{}
	for _, c := range checks {
		switch c.Status {
		case "pass", "warn", "fail", "info":
		default:
			t.Errorf("%s: status %q", c.Name, c.Status)
		}
		if (c.Status == "warn" || c.Status == "fail") && c.Fix == "" && c.Name != "firecracker" {
			t.Errorf("%s is %s with no fix: %s", c.Name, c.Status, c.Detail)
		}
		byName[c.Name] = c.Status
	}
	for _, want := range []string{"kvm", "qemu", "firecracker", "mkfs.ext4", "debootstrap", "kiln-agent", "disk space", "daemon", "network", "tun", "bridge", "nftables"} {
		if _, ok := byName[want]; !ok {
			t.Errorf("doctor has no %q check: %v", want, byName)
		}
	}
	if byName["kiln-agent"] != "fail" {
		t.Errorf("a missing agent must fail, got %s", byName["kiln-agent"])
	}
	if byName["daemon"] != "warn" {
		t.Errorf("no daemon on a fresh socket must warn, got %s", byName["daemon"])
	}
	// On a PVM-only host the kvm check must say so.
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		for _, c := range checks {
			if c.Name == "kvm" && (c.Status != "warn" || !strings.Contains(c.Detail, "PVM")) {
				t.Errorf("PVM host not reported: %+v", c)
			}
		}
	}
}
