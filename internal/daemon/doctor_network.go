package daemon

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/google/nftables"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/config"
	"github.com/kilnvm/kiln/internal/network"
)

// networkChecks says whether this host can give VMs a network: the TUN
// device (one TAP per VM), bridge support, and nftables (NAT). With
// `network = false` the findings are informational.
func networkChecks(cfg config.Config) []api.Check {
	var out []api.Check
	bad := "fail"
	if !cfg.Network {
		bad = "info"
		out = append(out, api.Check{Name: "network", Status: "info",
			Detail: "network = false: VMs get no network; `kiln vm forward` still reaches guest ports through the agent"})
	} else if mode, why := pickNetworkMode(cfg.NetworkMode, canCreateTAPs()); mode == netModeUser { // usernet.go
		out = append(out, api.Check{Name: "network", Status: "pass",
			Detail: "network = true, user mode (" + why + "): guests get 10.0.2.15 behind QEMU's NAT; no bridge, no " + cfg.DNSZone + " names; use `kiln vm forward` to reach guest ports"})
	} else {
		out = append(out, api.Check{Name: "network", Status: "pass",
			Detail: fmt.Sprintf("network = true: bridge %s, subnet %s, zone .%s", cfg.Bridge, cfg.Subnet, cfg.DNSZone)})
	}
	if f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0); err != nil {
		out = append(out, api.Check{Name: "tun", Status: bad, Detail: "/dev/net/tun is not usable: " + err.Error(),
			Fix: "load the tun module (`modprobe tun`); in a container, pass /dev/net/tun through"})
	} else {
		f.Close()
		out = append(out, api.Check{Name: "tun", Status: "pass", Detail: "/dev/net/tun is usable (TAP devices)"})
	}
	switch {
	case exists(filepath.Join("/sys/class/net", cfg.Bridge, "bridge")):
		out = append(out, api.Check{Name: "bridge", Status: "pass", Detail: "bridge " + cfg.Bridge + " exists"})
	case exists("/sys/module/bridge"):
		out = append(out, api.Check{Name: "bridge", Status: "pass", Detail: "bridge support is loaded; the daemon creates " + cfg.Bridge})
	default:
		out = append(out, api.Check{Name: "bridge", Status: "info",
			Detail: "the bridge module is not loaded yet; the kernel loads it when the daemon creates " + cfg.Bridge})
	}
	if c, err := nftables.New(); err != nil {
		out = append(out, api.Check{Name: "nftables", Status: bad, Detail: "no netlink to nftables: " + err.Error(), Fix: "run as root on a kernel with nf_tables"})
	} else if _, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4); err != nil {
		out = append(out, api.Check{Name: "nftables", Status: bad, Detail: "nftables is not usable (NAT): " + err.Error(),
			Fix: "load nf_tables and nft_masq (`modprobe nft_masq`), and run the daemon as root"})
	} else {
		out = append(out, api.Check{Name: "nftables", Status: "pass", Detail: "nftables answers (NAT through netlink; no iptables needed)"})
	}
	return append(out, hostDNSCheck(cfg, network.ProbeResolverHost()))
}

// hostDNSCheck says how the host will resolve names in the VM zone: through
// systemd-resolved (configured by the daemon) or by a recipe the user runs.
func hostDNSCheck(cfg config.Config, h network.ResolverHost) api.Check {
	var dnsAddr netip.Addr // the bridge's address, where the daemon's DNS server listens
	if sub, err := netip.ParsePrefix(cfg.Subnet); err == nil {
		dnsAddr = sub.Masked().Addr().Next()
	}
	i := network.PlanDNSIntegration(h, cfg.Bridge, dnsAddr, cfg.DNSZone)
	switch {
	case !cfg.Network:
		return api.Check{Name: "host dns", Status: "info", Detail: "network = false: no " + cfg.DNSZone + " zone to resolve"}
	case i.Kind == network.DNSResolved:
		return api.Check{Name: "host dns", Status: "pass", Detail: i.Detail + " (the daemon sets it up and reverts it when it stops)"}
	default:
		return api.Check{Name: "host dns", Status: "info", Detail: "*." + cfg.DNSZone + " names are not routed on the host: " + i.Detail, Fix: i.Recipe}
	}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
