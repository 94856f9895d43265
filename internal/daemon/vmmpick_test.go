package daemon

import (
	"errors"
	"strings"
	"testing"
)

func TestPickVMM(t *testing.T) {
	noFC := errors.New("firecracker binary \"firecracker\" not found")
	noKVM := errors.New("/dev/kvm is not usable")
	for _, tc := range []struct {
		configured string
		fc, kvm    error
		want       string
		wantErr    bool
		summary    string
	}{
		{"qemu", nil, nil, "qemu", false, "configured"},
		{"auto", nil, nil, "firecracker", false, "auto picked firecracker"},
		{"auto", noFC, nil, "qemu", false, "firecracker not usable"},
		{"auto", nil, noKVM, "qemu", false, "KVM not usable"},
		{"auto", noFC, noKVM, "qemu", false, "not found"},
		{"firecracker", nil, nil, "firecracker", false, "configured"},
		{"firecracker", nil, noKVM, "firecracker", false, "warning"},
		{"firecracker", noFC, nil, "firecracker", true, "unusable"},
	} {
		got := pickVMM(tc.configured, tc.fc, tc.kvm)
		if got.Name != tc.want || (got.Err != nil) != tc.wantErr || !strings.Contains(got.Summary, tc.summary) {
			t.Errorf("pickVMM(%q, %v, %v) = %+v; want %s err=%v summary~%q", tc.configured, tc.fc, tc.kvm, got, tc.want, tc.wantErr, tc.summary)
		}
	}
}
