package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/daemon/opstate"
	"github.com/kilnvm/kiln/internal/network"
	"github.com/kilnvm/kiln/internal/store"
	"github.com/kilnvm/kiln/internal/vmm"
)

// stageNetwork attaches a booting VM: TAP, NAT rules, DNS record. Like
// every stage it is a fault point.
const stageNetwork = "network"

// networkConfig derives the network's settings from the daemon's config.
// The TAP prefix and NAT table are derived from the bridge, so two daemons
// with different bridges never reap each other's TAPs or rules.
func networkConfig(c configView) (network.Config, error) {
	sub, err := netip.ParsePrefix(c.Subnet)
	if err != nil {
		return network.Config{}, fmt.Errorf("subnet %q: %v: %w", c.Subnet, err, api.ErrBadRequest)
	}
	prefix := c.Bridge
	if len(prefix) > 6 {
		prefix = prefix[:6]
	}
	table := "kiln"
	if c.Bridge != "kiln0" {
		table = "kiln-" + c.Bridge
	}
	var upstream []string
	if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		upstream = network.UpstreamFromResolvConf(string(b))
	}
	return network.Config{Bridge: c.Bridge, Subnet: sub, Zone: c.DNSZone, NATTable: table,
		TapPrefix: prefix + "-", PoolSize: 2, PoolParallel: 2, Upstream: upstream,
		TAPOwner: uint32(c.TAPOwner), TAPGroup: uint32(c.TAPGroup)}, nil
}

// configView is what networkConfig reads of the daemon's config. TAPOwner
// and TAPGroup are the jail user when Firecracker runs under jailer.
type configView struct {
	Bridge, Subnet, DNSZone string
	TAPOwner, TAPGroup      int
}

// openNetwork sets up the network when the configuration asks for it; the
// daemon then runs netReconcile after the VM reconcile.
func (d *Daemon) openNetwork(ctx context.Context) error {
	if !d.cfg.Network {
		return nil
	}
	mode, why := pickNetworkMode(d.cfg.NetworkMode, canCreateTAPs()) // usernet.go
	d.logger.Info("network mode", "mode", mode, "why", why)
	if mode == netModeUser {
		d.userNet = true
		return nil
	}
	nc, err := networkConfig(configView{d.cfg.Bridge, d.cfg.Subnet, d.cfg.DNSZone, d.cfg.JailerUID, d.cfg.JailerGID})
	if err != nil {
		return err
	}
	nc.Logger = d.logger
	nc.Resolver, nc.Runner = network.ProbeResolverHost(), d.runner // systemd-resolved routing for the zone
	// The network's locks are leaves of daemonLockOrder.
	nc.LockOrder = d.lockOrder
	m, err := network.Open(ctx, nc, d.store)
	if err != nil {
		return api.Hinted(fmt.Errorf("network: %w", err), "set `network = false` in the configuration to run without VM networking")
	}
	d.net = m
	return nil
}

// netReconcile restores the network of running VMs and removes the rest.
func (d *Daemon) netReconcile(ctx context.Context) error {
	if d.net == nil {
		return nil
	}
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	var running []network.Running
	for _, v := range vms {
		drv, err := d.driverFor(v)
		if err != nil && v.State == api.StateRunning {
			// Its driver is unavailable here (reconcile left it alone):
			// keep its network as a running VM's.
			running = append(running, network.Running{VMID: v.ID, Name: v.Name})
			continue
		}
		if err != nil {
			continue
		}
		if _, alive := d.liveHandle(drv, v.ID); alive && v.State == api.StateRunning {
			running = append(running, network.Running{VMID: v.ID, Name: v.Name})
		}
	}
	return d.net.Reconcile(ctx, running)
}

// netAllocate gives a new VM its address, released by the undo (and with
// the VM's record).
func (d *Daemon) netAllocate(ctx context.Context, rec store.VM, nat bool, undo *undoStack) error {
	if d.net == nil {
		return nil
	}
	if _, err := d.net.Allocate(ctx, rec.ID, nat); err != nil {
		return err
	}
	undo.push("address", func(ctx context.Context) error { return d.net.Release(ctx, rec.ID) })
	return nil
}

// netUp attaches a booting VM and returns the guest's NIC configuration
// and the VMM's NICs; nil and none when the network is off.
func (d *Daemon) netUp(ctx context.Context, op *opstate.Op, rec store.VM, undo *undoStack) (*proto.NetworkConfig, []vmm.NIC, error) {
	if d.userNet {
		return d.userNetUp(ctx, rec)
	}
	if d.net == nil {
		return nil, nil, nil
	}
	d.stage(op, stageNetwork, "")
	if _, err := d.net.Allocate(ctx, rec.ID, d.cfg.NAT); err != nil { // VMs made while the network was off
		return nil, nil, err
	}
	a, err := d.net.Attach(ctx, rec.ID, rec.Name)
	if err != nil {
		return nil, nil, err
	}
	undo.push("network", func(ctx context.Context) error { return d.net.Detach(ctx, rec.ID, rec.Name) })
	nc := &proto.NetworkConfig{MAC: a.MAC, Address: a.Addr.String(), Gateway: a.Gateway.String(),
		DNS: []string{a.DNS.String()}, Search: []string{a.Domain}}
	return nc, []vmm.NIC{{TAP: a.TAP, MAC: a.MAC}}, nil
}

// netDown detaches a VM that stopped; its address stays.
func (d *Daemon) netDown(ctx context.Context, v store.VM) error {
	if d.net == nil {
		return nil
	}
	return d.net.Detach(ctx, v.ID, v.Name)
}

// netForget detaches a VM being deleted and releases its address.
func (d *Daemon) netForget(ctx context.Context, v store.VM) error {
	if d.net == nil {
		return nil
	}
	return errors.Join(d.net.Detach(ctx, v.ID, v.Name), d.net.Release(ctx, v.ID))
}

// netAddress fills a VM's address and DNS name for the API.
func (d *Daemon) netAddress(ctx context.Context, out *api.VM) {
	if d.net == nil {
		return
	}
	if a, ok := d.net.Address(ctx, out.ID); ok {
		out.Address = a.String()
		out.DNSName = out.Name + "." + d.cfg.DNSZone
	}
}

func (d *Daemon) closeNetwork() error {
	if d.net == nil {
		return nil
	}
	return d.net.Close()
}
