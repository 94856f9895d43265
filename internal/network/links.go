package network

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/kilnvm/kiln/internal/api"
)

// Route is the part of a host route the subnet check needs.
type Route struct {
	Dst  netip.Prefix
	Link string
}

func hostRoutes(rs []netlink.Route) []Route {
	out := make([]Route, 0, len(rs))
	for _, r := range rs {
		if r.Dst == nil { // the default route overlaps everything by design
			continue
		}
		p, ok := netipPrefix(r.Dst)
		if !ok {
			continue
		}
		name := ""
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			name = l.Attrs().Name
		}
		out = append(out, Route{Dst: p, Link: name})
	}
	return out
}

func netipPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}

// CheckSubnet fails with api.ErrConflict when subnet overlaps a route of
// another link than bridge: the VMs' addresses would shadow (or be shadowed
// by) a network the host already reaches.
func CheckSubnet(routes []Route, subnet netip.Prefix, bridge string) error {
	for _, r := range routes {
		if r.Link == bridge || !r.Dst.Overlaps(subnet) || r.Dst.Bits() == 0 {
			continue
		}
		return api.Hinted(fmt.Errorf("subnet %v overlaps the host route %v on %s: %w", subnet, r.Dst, r.Link, api.ErrConflict),
			"choose another `subnet` in the [network] configuration")
	}
	return nil
}

// EnsureBridge creates the bridge if it is missing, gives it addr and sets
// it up. An existing link of that name that is not a bridge is a conflict.
func EnsureBridge(name string, addr netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("look up bridge %s: %w", name, err)
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		if l, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("look up bridge %s: %w", name, err)
		}
	} else if l.Type() != "bridge" {
		return fmt.Errorf("link %s exists and is a %s, not a bridge: %w", name, l.Type(), api.ErrConflict)
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", name, err)
	}
	have := false
	for _, a := range addrs {
		if p, ok := netipPrefix(a.IPNet); ok && a.IP.Equal(net.IP(addr.Addr().AsSlice())) && p.Bits() == addr.Bits() {
			have = true
		}
	}
	if !have {
		ipn := &net.IPNet{IP: net.IP(addr.Addr().AsSlice()), Mask: net.CIDRMask(addr.Bits(), 32)}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil {
			return fmt.Errorf("give bridge %s the address %v: %w", name, addr, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set bridge %s up: %w", name, err)
	}
	return nil
}

// CreateTAP creates a persistent TAP named prefix + random hex, owned by
// owner:group, enslaved to bridge and up, and returns its name.
func CreateTAP(prefix, bridge string, owner, group uint32) (string, error) {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return "", fmt.Errorf("look up bridge %s: %w", bridge, err)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := prefix + hex.EncodeToString(b[:])
	if len(name) > 15 {
		name = name[:15]
	}
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP,
		Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR, Owner: owner, Group: group}
	if err := netlink.LinkAdd(tap); err != nil {
		return "", fmt.Errorf("create TAP %s: %w", name, err)
	}
	if err := ensureTAPLink(tap, br); err != nil {
		return "", errors.Join(err, DeleteLink(name))
	}
	return name, nil
}

// ensureTAP checks that a recorded TAP still exists and is on the bridge.
func ensureTAP(name, bridge string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("TAP %s: %w", name, err)
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("look up bridge %s: %w", bridge, err)
	}
	return ensureTAPLink(l, br)
}

func ensureTAPLink(l, br netlink.Link) error {
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("attach %s to %s: %w", l.Attrs().Name, br.Attrs().Name, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
	}
	return nil
}

// DeleteLink deletes a link; an absent link is not an error.
func DeleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// MAC is the stable MAC address of a VM's NIC: QEMU's 52:54:00 prefix and
// three bytes of the SHA-256 of the VM id.
func MAC(vmID string) string {
	h := sha256.Sum256([]byte(vmID))
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", h[0], h[1], h[2])
}

// hostRange is the host numbers VMs get: after the network address (0) and
// the gateway (1), up to before the broadcast address.
func hostRange(p netip.Prefix) (lo, hi int) {
	return 2, 1<<(32-p.Bits()) - 2
}

// hostAddr is the n-th address of p.
func hostAddr(p netip.Prefix, n int) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func validIfName(s string) bool {
	if len(s) == 0 || len(s) > 15 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func validDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
