package firecracker

import (
	"net/http"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/vmm"
	"github.com/kilnvm/kiln/internal/vmm/firecracker/fcemu"
)

func loadSpec(t *testing.T) *fcemu.Spec {
	t.Helper()
	s, err := fcemu.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// everyRequest is every request the client can send, with every optional
// field set, so that each JSON field name is checked against the spec.
func everyRequest() []Request {
	burst := int64(1 << 20)
	lim := &RateLimiter{
		Bandwidth: &TokenBucket{Size: 100 << 20, OneTimeBurst: &burst, RefillTime: 1000},
		Ops:       &TokenBucket{Size: 1000, RefillTime: 1000},
	}
	spec := vmm.Spec{
		Name: "box", Dir: "/run/kiln/vm/1", CPUs: 2, MemoryMiB: 512,
		Kernel: "/k/vmlinux", Initrd: "/k/initrd", Cmdline: "console=ttyS0",
		Disks: []vmm.Disk{{Path: "/d/root.ext4"}, {Path: "/d/work.ext4", ReadOnly: true}},
		NICs:  []vmm.NIC{{TAP: "kiln-tap0", MAC: "02:00:00:00:00:01"}}, CID: 7,
	}
	reqs := Plan(spec, PathsFor(spec.Dir), Limits{Drive: lim, NIC: lim})
	// The limiters kiln's config makes (firecracker_*_mibps, _iops).
	reqs = append(reqs, Plan(spec, PathsFor(spec.Dir), Limits{Drive: PerSecond(200<<20, 1000), NIC: PerSecond(50<<20, 0)})...)
	reqs = append(reqs,
		Request{http.MethodPut, "/entropy", EntropyDevice{RateLimiter: lim}},
		ActionRequest(ActionInstanceStart), ActionRequest(ActionSendCtrlAltDel), ActionRequest(ActionFlushMetrics),
		PauseRequest(), ResumeRequest(),
		Request{http.MethodGet, "/version", nil}, Request{http.MethodGet, "/", nil},
	)
	return reqs
}

func TestContractEveryRequestMatchesSpec(t *testing.T) {
	s := loadSpec(t)
	seen := map[string]bool{}
	for _, r := range everyRequest() {
		if err := s.ValidateValue(r.Method, r.Path, r.Body); err != nil {
			t.Errorf("%s: %v", r, err)
		}
		seen[r.Method+" "+strings.SplitN(strings.TrimPrefix(r.Path, "/"), "/", 2)[0]] = true
	}
	// The list: machine, boot, drives, NICs, vsock, entropy,
	// logger, metrics, actions, pause/resume, version.
	for _, want := range []string{"PUT machine-config", "PUT boot-source", "PUT drives", "PUT network-interfaces",
		"PUT vsock", "PUT entropy", "PUT logger", "PUT metrics", "PUT actions", "PATCH vm", "GET version"} {
		if !seen[want] {
			t.Errorf("no request %s was checked", want)
		}
	}
}

// TestContractRejectsBrokenRequests shows that the validator would fail a
// client that sent what the spec forbids.
func TestContractRejectsBrokenRequests(t *testing.T) {
	s := loadSpec(t)
	for name, tc := range map[string]struct {
		method, path string
		body         any
		want         string
	}{
		"bad enum":          {"PUT", "/drives/root", Drive{DriveID: "root", PathOnHost: "/x", CacheType: "Fast"}, `"Fast" is not one of`},
		"missing required":  {"PUT", "/drives/root", map[string]any{"drive_id": "root", "path_on_host": "/x"}, `missing required field "is_root_device"`},
		"unknown field":     {"PUT", "/machine-config", map[string]any{"vcpu_count": 1, "mem_size_mib": 128, "memory": 1}, `unknown field "memory"`},
		"wrong type":        {"PUT", "/machine-config", map[string]any{"vcpu_count": "2", "mem_size_mib": 128}, "want an integer"},
		"above maximum":     {"PUT", "/machine-config", MachineConfig{VCPUCount: 33, MemSizeMiB: 128}, "above the maximum"},
		"reserved cid":      {"PUT", "/vsock", Vsock{GuestCID: 2, UDSPath: "/v"}, "below the minimum"},
		"bad action":        {"PUT", "/actions", InstanceAction{ActionType: "Reboot"}, "is not one of"},
		"missing body":      {"PUT", "/boot-source", nil, "missing request body"},
		"unknown path":      {"PUT", "/disks/root", Drive{}, "invalid request path"},
		"wrong method":      {"POST", "/boot-source", BootSource{KernelImagePath: "/k"}, "invalid request method"},
		"missing path part": {"PUT", "/drives", Drive{}, "invalid request path"},
	} {
		err := s.ValidateValue(tc.method, tc.path, tc.body)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error with %q", name, err, tc.want)
		}
	}
}
