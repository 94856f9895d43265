package network_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/kilnvm/kiln/internal/network"
	"github.com/kilnvm/kiln/internal/system"
)

func TestPlanDNSIntegration(t *testing.T) {
	dnsIP := netip.MustParseAddr("10.231.0.1")
	resolved := network.ResolverHost{ResolvedRuntime: true, Resolvectl: "/usr/bin/resolvectl"}
	cases := []struct {
		name       string
		host       network.ResolverHost
		kind       string
		detailWant string
	}{
		{"resolved running", resolved, network.DNSResolved, "*.vm queries to 10.231.0.1 on kiln0"},
		{"no resolved", network.ResolverHost{Resolvectl: "/usr/bin/resolvectl"}, network.DNSManual, "not running"},
		{"nothing", network.ResolverHost{}, network.DNSManual, "not running"},
		{"resolved without resolvectl", network.ResolverHost{ResolvedRuntime: true}, network.DNSManual, "resolvectl is not on PATH"},
		{"other netns", network.ResolverHost{ResolvedRuntime: true, Resolvectl: "/usr/bin/resolvectl", OtherNetNS: true}, network.DNSManual, "network namespace"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			i := network.PlanDNSIntegration(c.host, "kiln0", dnsIP, "vm")
			if i.Kind != c.kind || !strings.Contains(i.Detail, c.detailWant) {
				t.Fatalf("got %s (%s), want %s (…%s…)", i.Kind, i.Detail, c.kind, c.detailWant)
			}
			if c.kind == network.DNSManual {
				if len(i.Up)+len(i.Down) != 0 {
					t.Errorf("manual integration runs commands: %v %v", i.Up, i.Down)
				}
				for _, want := range []string{"resolvectl dns kiln0 10.231.0.1", "'~vm'", "server=/vm/10.231.0.1", "dig @10.231.0.1"} {
					if !strings.Contains(i.Recipe, want) {
						t.Errorf("recipe %q lacks %q", i.Recipe, want)
					}
				}
				return
			}
			if got, want := cmdStrings(i.Up), []string{
				"/usr/bin/resolvectl dns kiln0 10.231.0.1",
				"/usr/bin/resolvectl domain kiln0 ~vm",
				"/usr/bin/resolvectl default-route kiln0 false",
			}; !slices.Equal(got, want) {
				t.Errorf("up = %q, want %q", got, want)
			}
			if got, want := cmdStrings(i.Down), []string{"/usr/bin/resolvectl revert kiln0"}; !slices.Equal(got, want) {
				t.Errorf("down = %q, want %q", got, want)
			}
			if i.Recipe != "" {
				t.Errorf("resolved integration has a recipe: %q", i.Recipe)
			}
		})
	}
}

func TestDNSIntegrationApplyRollsBack(t *testing.T) {
	i := network.PlanDNSIntegration(network.ResolverHost{ResolvedRuntime: true, Resolvectl: "resolvectl"}, "kiln0", netip.MustParseAddr("10.231.0.1"), "vm")
	r := &recordRunner{fail: "resolvectl domain"}
	err := i.Apply(context.Background(), r)
	if err == nil || !strings.Contains(err.Error(), "resolvectl domain kiln0 ~vm") {
		t.Fatalf("apply with a failing domain command: got %v, want an error naming it", err)
	}
	if got, want := r.ran(), []string{"resolvectl dns kiln0 10.231.0.1", "resolvectl domain kiln0 ~vm", "resolvectl revert kiln0"}; !slices.Equal(got, want) {
		t.Fatalf("ran %q, want %q (a failed apply reverts)", got, want)
	}
}

func cmdStrings(cs []system.Cmd) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.String()
	}
	return out
}

// recordRunner records commands and fails those starting with fail.
type recordRunner struct {
	mu   sync.Mutex
	cmds []string
	fail string
}

func (r *recordRunner) Run(_ context.Context, c system.Cmd) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cmds = append(r.cmds, c.String())
	if r.fail != "" && strings.HasPrefix(c.String(), r.fail) {
		return nil, fmt.Errorf("%s: %w", c.Name, errors.New("exit status 1: Failed to set DNS configuration"))
	}
	return nil, nil
}

func (r *recordRunner) ran() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.cmds)
}

// testHostDNSResolved opens a Manager on a host that claims
// systemd-resolved: Open configures the bridge link through resolvectl and
// Close reverts it; when resolvectl fails, Open still succeeds, reverts
// what it did and reports the manual integration.
func testHostDNSResolved(t *testing.T) {
	ctx := context.Background()
	host := network.ResolverHost{ResolvedRuntime: true, Resolvectl: "resolvectl"}
	up := []string{"resolvectl dns kilnt0 10.231.0.1", "resolvectl domain kilnt0 ~vm", "resolvectl default-route kilnt0 false"}
	revert := "resolvectl revert kilnt0"

	r := &recordRunner{}
	c := cfg()
	c.Resolver, c.Runner = host, r
	m, err := network.Open(ctx, c, openStore(t))
	if err != nil {
		t.Fatal(err)
	}
	m1 := m
	t.Cleanup(func() { m1.Close(); _ = network.Teardown(cfg()) })
	if got := r.ran(); !slices.Equal(got, up) {
		t.Fatalf("open ran %q, want %q", got, up)
	}
	if i := m.HostDNS(); i.Kind != network.DNSResolved {
		t.Fatalf("integration %s (%s), want %s", i.Kind, i.Detail, network.DNSResolved)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if got := r.ran(); !slices.Equal(got, append(slices.Clone(up), revert)) {
		t.Fatalf("after close ran %q, want the revert last", got)
	}
	if err := m.Close(); err != nil { // a second Close reverts nothing again
		t.Fatal(err)
	}
	if got := r.ran(); len(got) != len(up)+1 {
		t.Fatalf("a second close ran more commands: %q", got)
	}

	r = &recordRunner{fail: "resolvectl default-route"}
	c.Runner = r
	m, err = network.Open(ctx, c, openStore(t))
	if err != nil {
		t.Fatalf("open must survive a failing resolvectl: %v", err)
	}
	m2 := m
	t.Cleanup(func() { m2.Close() })
	if got := r.ran(); !slices.Equal(got, append(slices.Clone(up), revert)) {
		t.Fatalf("open with a failing default-route ran %q, want the up commands then the revert", got)
	}
	if i := m.HostDNS(); i.Kind != network.DNSManual || !strings.Contains(i.Detail, "default-route") || i.Recipe == "" {
		t.Fatalf("integration after a failure: %+v, want manual naming the failed command, with a recipe", i)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if got := r.ran(); len(got) != len(up)+1 {
		t.Fatalf("close reverted an integration that was not applied: %q", got)
	}
}
