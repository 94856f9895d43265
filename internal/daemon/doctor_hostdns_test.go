package daemon

import (
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/config"
	"github.com/kilnvm/kiln/internal/network"
)

func TestHostDNSCheck(t *testing.T) {
	on := config.Default()
	on.Network, on.Bridge, on.Subnet, on.DNSZone = true, "kiln0", "10.231.0.0/24", "vm"
	off := on
	off.Network = false
	resolved := network.ResolverHost{ResolvedRuntime: true, Resolvectl: "/usr/bin/resolvectl"}
	cases := []struct {
		name        string
		cfg         config.Config
		host        network.ResolverHost
		status      string
		detail, fix string
	}{
		{"resolved", on, resolved, "pass", "systemd-resolved sends *.vm queries to 10.231.0.1 on kiln0", ""},
		{"no resolved", on, network.ResolverHost{}, "info", "not running", "resolvectl dns kiln0 10.231.0.1"},
		{"resolved without resolvectl", on, network.ResolverHost{ResolvedRuntime: true}, "info", "resolvectl is not on PATH", "server=/vm/10.231.0.1"},
		{"network off", off, resolved, "info", "network = false", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := hostDNSCheck(c.cfg, c.host)
			if got.Name != "host dns" || got.Status != c.status || !strings.Contains(got.Detail, c.detail) || !strings.Contains(got.Fix, c.fix) || (c.fix == "") != (got.Fix == "") {
				t.Fatalf("got %+v, want status %s, detail with %q, fix with %q", got, c.status, c.detail, c.fix)
			}
		})
	}
}
