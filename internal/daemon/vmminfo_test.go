package daemon

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/vmm"
)

func TestVMMInfo(t *testing.T) {
	noFC := errors.New(`firecracker binary "firecracker" not found`)
	for _, tc := range []struct {
		name string
		set  driverSet
		want []api.VMMInfo
		line string
	}{
		{"qemu only", driverSet{def: namedDriver("qemu"), usable: map[string]vmm.Driver{"qemu": namedDriver("qemu")},
			down: map[string]error{"firecracker": noFC}, versions: map[string]string{"qemu": "7.2.22"}},
			[]api.VMMInfo{{Name: "qemu", Usable: true, Default: true, Version: "7.2.22"},
				{Name: "firecracker", Reason: noFC.Error()}},
			`qemu 7.2.22 (default); firecracker not usable: firecracker binary "firecracker" not found`},
		{"both, firecracker default", driverSet{def: namedDriver("firecracker"),
			usable:   map[string]vmm.Driver{"qemu": namedDriver("qemu"), "firecracker": namedDriver("firecracker")},
			down:     map[string]error{},
			versions: map[string]string{"qemu": "7.2.22", "firecracker": "1.16.1"}},
			[]api.VMMInfo{{Name: "qemu", Usable: true, Version: "7.2.22"},
				{Name: "firecracker", Usable: true, Default: true, Version: "1.16.1"}},
			"qemu 7.2.22; firecracker 1.16.1 (default)"},
		{"unknown extra driver and unprobed known one", driverSet{def: namedDriver("kvmtool"),
			usable: map[string]vmm.Driver{"kvmtool": namedDriver("kvmtool")}},
			[]api.VMMInfo{{Name: "qemu", Reason: "not probed by this daemon"}, {Name: "firecracker", Reason: "not probed by this daemon"},
				{Name: "kvmtool", Usable: true, Default: true}},
			"qemu not usable: not probed by this daemon; firecracker not usable: not probed by this daemon; kvmtool (default)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.set.vmmInfo()
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("vmmInfo =\n%+v\nwant\n%+v", got, tc.want)
			}
			if line := VMMSummary(got); line != tc.line {
				t.Errorf("VMMSummary = %q, want %q", line, tc.line)
			}
		})
	}
	if s := VMMSummary(nil); !strings.Contains(s, "older daemon") {
		t.Errorf("empty list: %q", s)
	}
	multi := VMMSummary([]api.VMMInfo{{Name: "firecracker", Reason: "line one\nline two"}})
	if strings.Contains(multi, "line two") {
		t.Errorf("summary is not one line: %q", multi)
	}
}
