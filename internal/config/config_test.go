package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/api"
)

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLayers(t *testing.T) {
	p := write(t, "vcpus = 4\nmemory_mib = 2048\nstop_timeout = \"30s\"\nstate_dir = \"/srv/kiln\"\n")
	cfg, err := Load(p, []string{"KILN_VCPUS=8", "KILN_RUN_DIR=/tmp/r", "UNRELATED=1"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.VCPUs != 8 || cfg.MemoryMiB != 2048 || cfg.StopTimeout.Duration != 30*time.Second || cfg.StateDir != "/srv/kiln" || cfg.RunDir != "/tmp/r" {
		t.Fatalf("layers not applied in order: %+v", cfg)
	}
	if cfg.SocketPath() != "/tmp/r/kiln.sock" || cfg.Layout().Database() != "/srv/kiln/kiln.db" {
		t.Fatalf("derived paths: %s %s", cfg.SocketPath(), cfg.Layout().Database())
	}
	if cfg.VMM != "auto" || cfg.DefaultImage != "debian" || !cfg.Network {
		t.Fatalf("defaults lost: %+v", cfg)
	}
}

func TestBadConfigIsRefused(t *testing.T) {
	cases := map[string]struct {
		file string
		env  []string
	}{
		"unknown key":      {"vcpu = 2\n", nil},
		"bad toml":         {"vcpus = \n", nil},
		"bad vmm":          {"vmm = \"xen\"\n", nil},
		"bad accel":        {"accel = \"hvf\"\n", nil},
		"too few cpus":     {"vcpus = 0\n", nil},
		"little memory":    {"memory_mib = 16\n", nil},
		"relative dir":     {"state_dir = \"var/lib\"\n", nil},
		"bad level":        {"log_level = \"loud\"\n", nil},
		"bad env number":   {"", []string{"KILN_VCPUS=many"}},
		"bad env duration": {"", []string{"KILN_STOP_TIMEOUT=soon"}},
		"bad env bool":     {"", []string{"KILN_NETWORK=maybe"}},
		"bad network mode": {"network_mode = \"slirp\"\n", nil},
		"jailer as root":   {"jailer_binary = \"jailer\"\njailer_gid = 100\n", nil},
		"jailer gid 0":     {"", []string{"KILN_JAILER_BINARY=jailer", "KILN_JAILER_UID=1000"}},
		"jailer base":      {"jailer_binary = \"jailer\"\njailer_uid = 1\njailer_gid = 1\njailer_chroot_base = \"jail\"\n", nil},
		"jail w/o jailer":  {"jailer_uid = 1000\n", nil},
		"negative rate":    {"", []string{"KILN_FIRECRACKER_DRIVE_MIBPS=-1"}},
		"qemu uid alone":   {"qemu_uid = 65534\n", nil},
		"qemu gid alone":   {"", []string{"KILN_QEMU_GID=65534"}},
		"qemu negative":    {"", []string{"KILN_QEMU_UID=-1", "KILN_QEMU_GID=-1"}},
		"qemu uid 0":       {"qemu_uid = 0\nqemu_gid = 100\n", nil},
		"qemu uid word":    {"", []string{"KILN_QEMU_UID=nobody", "KILN_QEMU_GID=65534"}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := Load(write(t, c.file), c.env); !errors.Is(err, api.ErrBadRequest) {
				t.Fatalf("want bad_request, got %v", err)
			}
		})
	}
}

func TestJailer(t *testing.T) {
	cfg, err := Load(write(t, "jailer_binary = \"/usr/bin/jailer\"\njailer_uid = 1000\njailer_gid = 100\n"),
		[]string{"KILN_JAILER_CGROUPS=cpu.max=50000 100000; memory.max=1073741824;"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ChrootBase() != "/var/lib/kiln/jail" || len(cfg.JailerCgroups) != 2 || cfg.JailerCgroups[0] != "cpu.max=50000 100000" {
		t.Fatalf("jailer config: base %s, cgroups %q", cfg.ChrootBase(), cfg.JailerCgroups)
	}
}

func TestQEMUUser(t *testing.T) {
	cfg, err := Load(write(t, "qemu_uid = 1000\nqemu_gid = 100\n"), []string{"KILN_QEMU_UID=65534", "KILN_QEMU_GID=65533"})
	if err != nil || cfg.QEMUUID != 65534 || cfg.QEMUGID != 65533 {
		t.Fatalf("env over file: %d:%d, %v", cfg.QEMUUID, cfg.QEMUGID, err)
	}
	if cfg, err = Load(write(t, ""), nil); err != nil || cfg.QEMUUID != 0 || cfg.QEMUGID != 0 {
		t.Fatalf("default: %d:%d, %v; want root", cfg.QEMUUID, cfg.QEMUGID, err)
	}
}

func TestMissingFiles(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "nope.toml"), nil); err == nil {
		t.Fatal("an explicitly named missing file must be an error")
	}
}

func TestNetworkCanBeTurnedOff(t *testing.T) {
	cfg, err := Load(write(t, ""), []string{"KILN_NETWORK=false"})
	if err != nil || cfg.Network {
		t.Fatalf("KILN_NETWORK=false: network %v, err %v", cfg.Network, err)
	}
	cfg, err = Load(write(t, "network = false\n"), nil)
	if err != nil || cfg.Network {
		t.Fatalf("network = false: network %v, err %v", cfg.Network, err)
	}
}
