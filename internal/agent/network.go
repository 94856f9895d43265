package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kilnvm/kiln/internal/agent/proto"
)

// nicTimeout bounds the wait for the NIC to appear once virtio_net loaded.
const nicTimeout = 15 * time.Second

// checkNetwork validates a NetworkConfig; ParseConfig calls it.
func checkNetwork(nc *proto.NetworkConfig) []string {
	if nc == nil {
		return nil
	}
	var errs []string
	if _, err := net.ParseMAC(nc.MAC); err != nil {
		errs = append(errs, fmt.Sprintf("network.mac %q: %v", nc.MAC, err))
	}
	if _, err := netip.ParsePrefix(nc.Address); err != nil {
		errs = append(errs, fmt.Sprintf("network.address %q: want CIDR such as 10.231.0.2/24", nc.Address))
	}
	if nc.Gateway != "" {
		if _, err := netip.ParseAddr(nc.Gateway); err != nil {
			errs = append(errs, fmt.Sprintf("network.gateway %q: want an IP address", nc.Gateway))
		}
	}
	for _, d := range nc.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			errs = append(errs, fmt.Sprintf("network.dns %q: want an IP address", d))
		}
	}
	return errs
}

// ConfigureNetwork waits for the NIC with nc.MAC, gives it its address,
// sets it up, adds the default route and writes root/etc/resolv.conf.
func ConfigureNetwork(ctx context.Context, nc proto.NetworkConfig, root string) error {
	mac, err := net.ParseMAC(nc.MAC)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, nicTimeout)
	defer cancel()
	var link netlink.Link
	for link == nil {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		for _, l := range links {
			if l.Attrs().HardwareAddr.String() == mac.String() {
				link = l
			}
		}
		if link != nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no NIC with MAC %s appeared within %s (is virtio_net in the module list?)", nc.MAC, nicTimeout)
		case <-time.After(20 * time.Millisecond):
		}
	}
	addr, err := netlink.ParseAddr(nc.Address)
	if err != nil {
		return fmt.Errorf("address %q: %w", nc.Address, err)
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("give %s the address %s: %w", link.Attrs().Name, nc.Address, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", link.Attrs().Name, err)
	}
	if nc.Gateway != "" {
		gw := net.ParseIP(nc.Gateway)
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}); err != nil {
			return fmt.Errorf("default route via %s: %w", nc.Gateway, err)
		}
	}
	if len(nc.DNS) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString("# written by kiln-agent\n")
	for _, d := range nc.DNS {
		fmt.Fprintf(&b, "nameserver %s\n", d)
	}
	if len(nc.Search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(nc.Search, " "))
	}
	path := filepath.Join(root, "etc", "resolv.conf")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	// A symlink (to a resolver's stub file) is replaced by a plain file.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
