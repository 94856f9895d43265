package firecracker

import (
	"errors"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/vmm"
)

func TestPlanOrderAndContent(t *testing.T) {
	spec := vmm.Spec{Name: "box", Dir: "/r", CPUs: 2, MemoryMiB: 256, Kernel: "/k", Initrd: "/i", Cmdline: "quiet",
		Disks: []vmm.Disk{{Path: "/root"}, {Path: "/work", ReadOnly: true}}, NICs: []vmm.NIC{{TAP: "t0"}}, CID: 9}
	var got []string
	for _, r := range Plan(spec, PathsFor("/r"), Limits{}) {
		got = append(got, r.String())
	}
	want := "PUT /logger,PUT /metrics,PUT /machine-config,PUT /boot-source,PUT /drives/root,PUT /drives/disk1," +
		"PUT /network-interfaces/eth0,PUT /vsock,PUT /entropy"
	if strings.Join(got, ",") != want {
		t.Fatalf("plan = %s\nwant   %s", strings.Join(got, ","), want)
	}
	reqs := Plan(spec, PathsFor("/r"), Limits{})
	if d := reqs[5].Body.(Drive); d.IsRootDevice || !d.IsReadOnly || d.PathOnHost != "/work" {
		t.Errorf("second drive = %+v", d)
	}
	if v := reqs[7].Body.(Vsock); v.GuestCID != 9 || v.UDSPath != "/r/vsock.sock" {
		t.Errorf("vsock = %+v", v)
	}
}

func TestValidateSpecRejects(t *testing.T) {
	good := vmm.Spec{Name: "box", Dir: "/r", CPUs: 1, MemoryMiB: 128, Kernel: "/k", Disks: []vmm.Disk{{Path: "/d"}}, CID: 3}
	if err := validateSpec(good, PathsFor(good.Dir)); err != nil {
		t.Fatalf("good spec: %v", err)
	}
	for name, mut := range map[string]func(*vmm.Spec){
		"cpus":     func(s *vmm.Spec) { s.CPUs = 33 },
		"memory":   func(s *vmm.Spec) { s.MemoryMiB = 8 },
		"kernel":   func(s *vmm.Spec) { s.Kernel = "k" },
		"no disk":  func(s *vmm.Spec) { s.Disks = nil },
		"cid":      func(s *vmm.Spec) { s.CID = 2 },
		"tap":      func(s *vmm.Spec) { s.NICs = []vmm.NIC{{TAP: "a,b"}} },
		"long dir": func(s *vmm.Spec) { s.Dir = "/" + strings.Repeat("x", 100) },
	} {
		s := good
		mut(&s)
		if err := validateSpec(s, PathsFor(s.Dir)); !errors.Is(err, api.ErrBadRequest) {
			t.Errorf("%s: got %v, want bad_request", name, err)
		}
	}
}

func TestParseVersion(t *testing.T) {
	r, err := ParseVersion("Firecracker v1.16.1\n\nSupported snapshot data format versions: ...")
	if err != nil || r != (Release{1, 16, 1}) {
		t.Fatalf("got %v, %v", r, err)
	}
	if _, err := ParseVersion("qemu 7.2"); err == nil {
		t.Fatal("want an error for foreign output")
	}
	if !(Release{1, 7, 9}).Less(MinRelease()) || MinRelease().Less(Release{1, 7, 0}) {
		t.Fatal("Less is wrong")
	}
}

func TestPerSecond(t *testing.T) {
	if PerSecond(0, 0) != nil {
		t.Error("no rates must mean no limiter")
	}
	l := PerSecond(100<<20, 0)
	if l.Bandwidth == nil || l.Bandwidth.Size != 100<<20 || l.Bandwidth.RefillTime != 1000 || l.Ops != nil {
		t.Errorf("bandwidth only: %+v %+v", l.Bandwidth, l.Ops)
	}
	l = PerSecond(0, 500)
	if l.Bandwidth != nil || l.Ops == nil || l.Ops.Size != 500 {
		t.Errorf("ops only: %+v %+v", l.Bandwidth, l.Ops)
	}
}
