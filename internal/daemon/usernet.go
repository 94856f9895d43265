package daemon

import (
	"context"
	"fmt"
	"os"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/network"
	"github.com/kilnvm/kiln/internal/store"
	"github.com/kilnvm/kiln/internal/vmm"
)

// User-mode networking (QEMU's slirp) gives every guest the same private
// network: the guest is 10.0.2.15/24, QEMU answers as the gateway 10.0.2.2
// (which reaches the host's own addresses, loopback included) and as the
// DNS server 10.0.2.3 (forwarding to the host's resolvers).
const (
	userNetAddress = "10.0.2.15/24"
	userNetGateway = "10.0.2.2"
	userNetDNS     = "10.0.2.3"
)

// Network modes (config `network_mode`).
const (
	netModeAuto   = "auto"
	netModeBridge = "bridge"
	netModeUser   = "user"
)

// pickNetworkMode resolves the configured mode: auto means bridge when the
// daemon can create TAPs (tapErr == nil), else user-mode networking.
func pickNetworkMode(mode string, tapErr error) (string, string) {
	switch {
	case mode == netModeUser:
		return netModeUser, "network_mode = user"
	case mode == netModeBridge:
		return netModeBridge, "network_mode = bridge"
	case tapErr != nil:
		return netModeUser, "the daemon cannot create TAPs (" + tapErr.Error() + "): QEMU user-mode networking, no bridge, NAT or DNS names"
	default:
		return netModeBridge, "the daemon can create TAPs"
	}
}

// canCreateTAPs says why this process cannot create TAP devices, if it
// cannot: it needs root (CAP_NET_ADMIN) and a usable /dev/net/tun.
func canCreateTAPs() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("not running as root")
	}
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("/dev/net/tun: %w", err)
	}
	return f.Close()
}

// userNetUp is netUp in user mode: no TAP or address to allocate, the
// guest's configuration is fixed, and only QEMU has the network stack.
func (d *Daemon) userNetUp(_ context.Context, rec store.VM) (*proto.NetworkConfig, []vmm.NIC, error) {
	if rec.Driver != "qemu" {
		return nil, nil, api.Hinted(fmt.Errorf("vm %s: user-mode networking needs the qemu driver, not %s: %w", rec.Name, rec.Driver, api.ErrFailedPrecondition),
			"run the daemon as root with /dev/net/tun (network_mode = bridge), or use vmm = qemu")
	}
	mac := network.MAC(rec.ID)
	nc := &proto.NetworkConfig{MAC: mac, Address: userNetAddress, Gateway: userNetGateway, DNS: []string{userNetDNS}}
	return nc, []vmm.NIC{{User: true, MAC: mac}}, nil
}
