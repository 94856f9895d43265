package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"

	"github.com/kilnvm/kiln/internal/system"
)

// ResolverHost is what the host DNS integration looks at: whether
// systemd-resolved runs, where resolvectl is, and whether this process
// shares resolved's network namespace. ProbeResolverHost reads the real
// host; tests build one.
type ResolverHost struct {
	// ResolvedRuntime: /run/systemd/resolve/ exists, so systemd-resolved
	// runs (it creates the directory when it starts).
	ResolvedRuntime bool
	// Resolvectl is resolvectl's path; "" when it is not on PATH.
	Resolvectl string
	// OtherNetNS: this process runs in another network namespace than
	// PID 1, where resolved runs; resolved cannot see the bridge then.
	OtherNetNS bool
}

// ProbeResolverHost looks at this host.
func ProbeResolverHost() ResolverHost {
	var h ResolverHost
	if fi, err := os.Stat("/run/systemd/resolve"); err == nil && fi.IsDir() {
		h.ResolvedRuntime = true
	}
	if p, err := exec.LookPath("resolvectl"); err == nil {
		h.Resolvectl = p
	}
	self, err1 := os.Readlink("/proc/self/ns/net")
	pid1, err2 := os.Readlink("/proc/1/ns/net")
	h.OtherNetNS = err1 == nil && err2 == nil && self != pid1
	return h
}

// Kinds of host DNS integration.
const (
	// DNSResolved: kiln points systemd-resolved at its DNS server for the
	// zone on the bridge link (and reverts it at Close).
	DNSResolved = "systemd-resolved"
	// DNSManual: kiln changes nothing; Recipe says what the user can do.
	DNSManual = "manual"
)

// DNSIntegration is how the host resolves names in the VM zone: the
// decision PlanDNSIntegration makes, and the commands that carry it out.
type DNSIntegration struct {
	Kind   string // DNSResolved or DNSManual
	Detail string // why, in one line
	// Up configures the bridge link in resolved; Down reverts it. Both
	// empty for DNSManual.
	Up, Down []system.Cmd
	// Recipe is what a user can do to resolve the zone on the host; empty
	// for DNSResolved.
	Recipe string
}

// PlanDNSIntegration decides how the host resolves "<name>.<zone>": through
// systemd-resolved, with the bridge link's DNS server set to dns and the
// zone routed to it (and the link kept off the default route), when
// resolved runs in this network namespace and resolvectl is on PATH;
// otherwise manually, with a recipe.
func PlanDNSIntegration(h ResolverHost, bridge string, dns netip.Addr, zone string) DNSIntegration {
	recipe := fmt.Sprintf("route the %q zone to %s: with systemd-resolved `resolvectl dns %s %s; resolvectl domain %s '~%s'`; with dnsmasq `server=/%s/%s`; or query it directly (`dig @%s NAME.%s`)",
		zone, dns, bridge, dns, bridge, zone, zone, dns, dns, zone)
	manual := func(detail string) DNSIntegration {
		return DNSIntegration{Kind: DNSManual, Detail: detail, Recipe: recipe}
	}
	switch {
	case !h.ResolvedRuntime:
		return manual("systemd-resolved is not running (no /run/systemd/resolve/); kiln does not change the host's resolver")
	case h.Resolvectl == "":
		return manual("systemd-resolved runs but resolvectl is not on PATH")
	case h.OtherNetNS:
		return manual("the daemon runs in another network namespace than systemd-resolved, which cannot see " + bridge)
	}
	rc := func(args ...string) system.Cmd { return system.Cmd{Name: h.Resolvectl, Args: args} }
	return DNSIntegration{
		Kind:   DNSResolved,
		Detail: fmt.Sprintf("systemd-resolved sends *.%s queries to %s on %s", zone, dns, bridge),
		Up: []system.Cmd{
			rc("dns", bridge, dns.String()),
			rc("domain", bridge, "~"+zone),
			rc("default-route", bridge, "false"),
		},
		Down: []system.Cmd{rc("revert", bridge)},
	}
}

// Apply runs the Up commands. When one fails, the Down commands run too,
// so resolved is left as it was, and the error says what failed.
func (i DNSIntegration) Apply(ctx context.Context, r system.Runner) error {
	for _, c := range i.Up {
		if _, err := r.Run(ctx, c); err != nil {
			return errors.Join(fmt.Errorf("configure systemd-resolved (%s): %w", c, err), i.Revert(context.WithoutCancel(ctx), r))
		}
	}
	return nil
}

// Revert runs the Down commands.
func (i DNSIntegration) Revert(ctx context.Context, r system.Runner) error {
	var errs []error
	for _, c := range i.Down {
		if _, err := r.Run(ctx, c); err != nil {
			errs = append(errs, fmt.Errorf("revert systemd-resolved (%s): %w", c, err))
		}
	}
	return errors.Join(errs...)
}

// openHostDNS carries out the plan for this Manager's bridge and logs one
// line saying which integration is active. A failure is not fatal (the VMs'
// network works without it): the integration falls back to manual, with
// the error in its detail.
func (m *Manager) openHostDNS(ctx context.Context) DNSIntegration {
	i := PlanDNSIntegration(m.cfg.Resolver, m.cfg.Bridge, m.gateway, m.cfg.Zone)
	if i.Kind == DNSResolved {
		err := i.Apply(ctx, m.cfg.Runner)
		if err == nil {
			m.log.Info("host DNS", "integration", i.Kind, "detail", i.Detail)
			return i
		}
		i = PlanDNSIntegration(ResolverHost{}, m.cfg.Bridge, m.gateway, m.cfg.Zone)
		i.Detail = err.Error()
		m.log.Warn("host DNS: systemd-resolved was not configured", "integration", i.Kind, "err", err, "recipe", i.Recipe)
		return i
	}
	m.log.Info("host DNS", "integration", i.Kind, "detail", i.Detail, "recipe", i.Recipe)
	return i
}

// HostDNS is the host DNS integration Open set up (DNSManual when none).
func (m *Manager) HostDNS() DNSIntegration { return m.hostDNS }
