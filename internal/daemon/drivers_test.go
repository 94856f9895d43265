package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/config"
	"github.com/kilnvm/kiln/internal/store"
	"github.com/kilnvm/kiln/internal/vmm"
)

// namedDriver is a vmm.Driver that only has a name: selection never
// starts anything.
type namedDriver string

func (n namedDriver) Name() string                         { return string(n) }
func (namedDriver) Probe(context.Context) error            { return nil }
func (namedDriver) Features() vmm.Features                 { return vmm.Features{} }
func (namedDriver) Alive(vmm.Handle) bool                  { return false }
func (namedDriver) Kill(context.Context, vmm.Handle) error { return nil }
func (namedDriver) Start(context.Context, vmm.Spec) (vmm.Handle, error) {
	return vmm.Handle{}, errors.New("namedDriver cannot start")
}
func (namedDriver) Stop(context.Context, vmm.Handle, time.Duration) error { return nil }

func TestDriverSetForRequest(t *testing.T) {
	noFC := errors.New(`firecracker binary "firecracker" not found`)
	qemuOnly := driverSet{def: namedDriver("qemu"), usable: map[string]vmm.Driver{"qemu": namedDriver("qemu")},
		down: map[string]error{"firecracker": noFC}}
	both := driverSet{def: namedDriver("qemu"), usable: map[string]vmm.Driver{"qemu": namedDriver("qemu"), "firecracker": namedDriver("firecracker")},
		down: map[string]error{}}
	fcDefault := driverSet{def: namedDriver("firecracker"), usable: both.usable, down: both.down}
	for _, tc := range []struct {
		name    string
		set     driverSet
		req     string
		want    string
		wantErr error
		errHas  string
	}{
		{"empty takes the default", qemuOnly, "", "qemu", nil, ""},
		{"auto takes the default", fcDefault, "auto", "firecracker", nil, ""},
		{"explicit qemu", fcDefault, "qemu", "qemu", nil, ""},
		{"explicit firecracker", both, "firecracker", "firecracker", nil, ""},
		{"unusable carries the probe reason", qemuOnly, "firecracker", "", api.ErrFailedPrecondition, "not found"},
		{"unknown name", both, "kvmtool", "", api.ErrBadRequest, "unknown vmm"},
		{"names are case-sensitive", both, "QEMU", "", api.ErrBadRequest, "unknown vmm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.set.forRequest(tc.req)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("forRequest(%q) = %v, %v; want %v containing %q", tc.req, got, err, tc.wantErr, tc.errHas)
				}
				return
			}
			if err != nil || got.Name() != tc.want {
				t.Fatalf("forRequest(%q) = %v, %v; want %s", tc.req, got, err, tc.want)
			}
		})
	}
}

func TestDriverSetForVM(t *testing.T) {
	noFC := errors.New(`firecracker binary "firecracker" not found`)
	set := driverSet{def: namedDriver("qemu"), usable: map[string]vmm.Driver{"qemu": namedDriver("qemu")},
		down: map[string]error{"firecracker": noFC}}
	vm := func(driver string) store.VM { return store.VM{Name: "box", Driver: driver} }
	if drv, err := set.forVM(vm("qemu")); err != nil || drv.Name() != "qemu" {
		t.Errorf("qemu vm: %v, %v", drv, err)
	}
	if drv, err := set.forVM(vm("")); err != nil || drv.Name() != "qemu" {
		t.Errorf("a record without a driver takes the default: %v, %v", drv, err)
	}
	_, err := set.forVM(vm("firecracker"))
	if !errors.Is(err, api.ErrFailedPrecondition) || !strings.Contains(err.Error(), `vm "box" runs on the firecracker VMM`) || !strings.Contains(err.Error(), "not found") {
		t.Errorf("firecracker vm on a daemon without it: %v", err)
	}
	_, err = set.forVM(vm("bhyve"))
	if !errors.Is(err, api.ErrFailedPrecondition) || !strings.Contains(err.Error(), "no such driver") {
		t.Errorf("vm of an unknown driver: %v", err)
	}
	if got := strings.Join(set.names(), ","); got != "qemu" {
		t.Errorf("names() = %s", got)
	}
}

// fakeBinary writes an executable shell script answering the probes.
func fakeBinary(t *testing.T, name, script string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPickDrivers(t *testing.T) {
	fc := fakeBinary(t, "firecracker", `echo "Firecracker v1.16.1"`+"\n")
	oldFC := fakeBinary(t, "firecracker", `echo "Firecracker v1.2.0"`+"\n")
	qemuOK := fakeBinary(t, "qemu-system-x86_64", `case "$1" in
--version) echo "QEMU emulator version 7.2.0 (Debian 1:7.2+dfsg-7)";;
-M) echo "Supported machines are:"; echo "microvm              microvm (i386)";;
esac
`)
	missing := filepath.Join(t.TempDir(), "absent")
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		name              string
		vmm, fcBin, qBin  string
		def               string // "" when Open must fail
		usable, downNames string
	}{
		{"qemu default, firecracker also usable", "qemu", fc, qemuOK, "qemu", "firecracker,qemu", ""},
		{"qemu default, firecracker missing", "qemu", missing, qemuOK, "qemu", "qemu", "firecracker"},
		{"qemu default, firecracker too old", "auto", oldFC, qemuOK, "qemu", "qemu", "firecracker"},
		{"firecracker default survives a missing qemu", "firecracker", fc, missing, "firecracker", "firecracker", "qemu"},
		{"configured firecracker that does not probe fails", "firecracker", missing, qemuOK, "", "", ""},
		{"default qemu that does not probe fails", "qemu", fc, missing, "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Config{VMM: tc.vmm, Accel: "tcg", QEMUBinary: tc.qBin, FirecrackerBinary: tc.fcBin}
			s, err := pickDrivers(context.Background(), cfg, logger, nil)
			if tc.def == "" {
				if err == nil {
					t.Fatalf("pickDrivers succeeded with default %s; want an error", s.def.Name())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var down []string
			for n := range s.down {
				down = append(down, n)
			}
			sort.Strings(down)
			if s.def.Name() != tc.def || strings.Join(s.names(), ",") != tc.usable || strings.Join(down, ",") != tc.downNames {
				t.Fatalf("default %s usable %v down %v; want %s, %s, %s", s.def.Name(), s.names(), down, tc.def, tc.usable, tc.downNames)
			}
		})
	}
}

// The config's jailer and rate-limit keys reach the Firecracker driver.
func TestFirecrackerSettingsFromConfig(t *testing.T) {
	cfg := config.Default()
	if jailerConfig(cfg) != nil {
		t.Error("no jailer_binary must mean no jailer")
	}
	if l := firecrackerLimits(cfg); l.Drive != nil || l.NIC != nil {
		t.Errorf("default limits = %+v, want none", l)
	}
	cfg.JailerBinary, cfg.JailerUID, cfg.JailerGID = "/usr/bin/jailer", 1000, 1001
	cfg.FirecrackerDriveMiBps, cfg.FirecrackerDriveIOPS, cfg.FirecrackerNetMiBps = 512, 20000, 100
	j := jailerConfig(cfg)
	if j == nil || j.UID != 1000 || j.GID != 1001 || j.ChrootBase != "/var/lib/kiln/jail" {
		t.Errorf("jailer = %+v", j)
	}
	l := firecrackerLimits(cfg)
	if l.Drive == nil || l.Drive.Bandwidth.Size != 512<<20 || l.Drive.Ops.Size != 20000 ||
		l.NIC == nil || l.NIC.Bandwidth.Size != 100<<20 || l.NIC.Ops != nil {
		t.Errorf("limits = drive %+v, nic %+v", l.Drive, l.NIC)
	}
}
