// Package network gives kiln's VMs a network on the host: a bridge with a
// subnet (checked against the host's routes), one TAP per VM taken from a
// warm pool, addresses from a persisted lease table (IPAM), NAT through
// nftables (one table, per-VM rules) and an in-process DNS server that is
// authoritative for the VM zone. Everything goes through netlink; no `ip`,
// `iptables` or `nft` binary is needed.
//
// A Manager works in the network namespace of the thread that calls Open and
// of the goroutines it starts; a process that must keep kiln's network away
// from the host's runs whole inside a namespace (`ip netns exec`), which is
// what kiln's tests do.
package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/lockorder"
	"github.com/kilnvm/kiln/internal/system"
)

// Config describes the network a Manager owns.
type Config struct {
	// Bridge is the bridge's name (kiln0).
	Bridge string
	// Subnet is the VMs' IPv4 subnet; the bridge (the gateway and DNS
	// server) takes its first host address.
	Subnet netip.Prefix
	// Zone is the DNS zone answered with VM addresses ("vm").
	Zone string
	// NATTable is the nftables table (family ip) kiln owns ("kiln").
	NATTable string
	// TapPrefix starts every TAP name kiln creates; reconcile deletes
	// TAPs with this prefix that no VM holds. At most 8 bytes.
	TapPrefix string
	// PoolSize is how many warm TAPs are kept ready; PoolParallel bounds
	// how many are created at once.
	PoolSize, PoolParallel int
	// TAPOwner and TAPGroup own every TAP kiln creates, so a VMM running
	// as that user (Firecracker under jailer) may attach to it; 0 is root.
	TAPOwner, TAPGroup uint32
	// Upstream DNS servers (host:port) for names outside Zone; none means
	// such queries are refused.
	Upstream []string
	Logger   *slog.Logger
	// Resolver is the host as the DNS integration sees it (resolved.go);
	// the zero value means no systemd-resolved, so kiln changes nothing.
	Resolver ResolverHost
	// Runner runs resolvectl (system.ExecRunner when nil).
	Runner system.Runner
	// LockOrder, when set, names the network's locks (LockTapPool,
	// LockNAT, LockDNSServer: leaves) in it; nil leaves them unchecked.
	LockOrder *lockorder.Order
}

// Leases persist address assignments (internal/store implements it).
type Leases interface {
	// AllocateLease gives vmID the lowest free host number in [lo, hi]
	// (or its existing one), atomically; ErrUnavailable when none is left.
	AllocateLease(ctx context.Context, vmID string, lo, hi int, nat bool) (Lease, error)
	// SetLeaseTAP records the TAP a VM holds ("" when none).
	SetLeaseTAP(ctx context.Context, vmID, tap string) error
	GetLease(ctx context.Context, vmID string) (Lease, error)
	ListLeases(ctx context.Context) ([]Lease, error)
	ReleaseLease(ctx context.Context, vmID string) error
}

// Lease is one VM's persisted network assignment.
type Lease struct {
	VMID string
	Host int    // host number within the subnet (2 = first VM address)
	TAP  string // the TAP the VM holds while it runs, else ""
	NAT  bool
}

// Attachment is what a running VM's network looks like; the daemon passes
// it to the VMM (TAP, MAC) and the guest (addresses).
type Attachment struct {
	VMID, Name string
	TAP        string
	MAC        string
	Addr       netip.Prefix // the guest's address with the subnet's length
	Gateway    netip.Addr
	DNS        netip.Addr
	Domain     string
	NAT        bool
}

// Manager owns the bridge, the TAP pool, NAT and DNS of one daemon.
type Manager struct {
	// Immutable after Open.
	cfg     Config
	leases  Leases
	log     *slog.Logger
	gateway netip.Addr
	pool    *TapPool
	nat     *NAT
	dns     *DNSServer
	hostDNS DNSIntegration // what Open set up; reverted by Close
}

// Open sets up the bridge (creating it if needed), IP forwarding, the NAT
// table, the DNS server and the TAP pool. Running VMs' TAPs, rules and
// records are restored by Reconcile, which must be called next: it also
// starts filling the pool.
func Open(ctx context.Context, cfg Config, leases Leases) (_ *Manager, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Runner == nil {
		cfg.Runner = system.ExecRunner{}
	}
	m := &Manager{cfg: cfg, leases: leases, log: cfg.Logger, gateway: cfg.Subnet.Addr().Next()}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list host routes: %w", err)
	}
	if err := CheckSubnet(hostRoutes(routes), cfg.Subnet, cfg.Bridge); err != nil {
		return nil, err
	}
	if err := EnsureBridge(cfg.Bridge, netip.PrefixFrom(m.gateway, cfg.Subnet.Bits())); err != nil {
		return nil, err
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		return nil, fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	if m.nat, err = OpenNAT(cfg.NATTable, cfg.Bridge); err != nil {
		return nil, err
	}
	m.nat.mu.Name, m.nat.mu.Order = LockNAT, cfg.LockOrder // not yet shared, not held
	if m.dns, err = StartDNS(DNSConfig{Zone: cfg.Zone, Listen: netip.AddrPortFrom(m.gateway, 53), Upstream: cfg.Upstream, Logger: m.log, LockOrder: cfg.LockOrder}); err != nil {
		return nil, err
	}
	m.pool = NewTapPool(PoolConfig{
		Size: cfg.PoolSize, Parallel: cfg.PoolParallel, Logger: m.log,
		Create: func(ctx context.Context) (string, error) {
			return CreateTAP(cfg.TapPrefix, cfg.Bridge, cfg.TAPOwner, cfg.TAPGroup)
		},
		Delete:    DeleteLink,
		LockOrder: cfg.LockOrder,
	})
	m.log.Info("network ready", "bridge", cfg.Bridge, "subnet", cfg.Subnet, "gateway", m.gateway, "zone", cfg.Zone, "nat_table", cfg.NATTable)
	m.hostDNS = m.openHostDNS(ctx)
	return m, nil
}

func (c Config) validate() error {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("network: "+f+": %w", append(a, api.ErrBadRequest)...)
	}
	if !c.Subnet.IsValid() || !c.Subnet.Addr().Is4() {
		return bad("subnet %v: want an IPv4 prefix such as 10.231.0.0/24", c.Subnet)
	}
	if c.Subnet.Bits() > 29 || c.Subnet.Bits() < 16 {
		return bad("subnet %v: want a prefix length from /16 to /29", c.Subnet)
	}
	if c.Subnet.Masked() != c.Subnet {
		return bad("subnet %v: host bits are set (did you mean %v?)", c.Subnet, c.Subnet.Masked())
	}
	if !validIfName(c.Bridge) {
		return bad("bridge %q: want 1-15 letters, digits, '-', '_' or '.'", c.Bridge)
	}
	if !validIfName(c.TapPrefix) || len(c.TapPrefix) > 8 {
		return bad("tap prefix %q: want 1-8 letters, digits, '-', '_' or '.'", c.TapPrefix)
	}
	if c.Zone == "" || !validDNSLabel(c.Zone) {
		return bad("zone %q: want one DNS label such as \"vm\"", c.Zone)
	}
	if c.NATTable == "" {
		return bad("nat table name is empty")
	}
	return nil
}

// Gateway is the bridge's address: the guests' gateway and DNS server.
func (m *Manager) Gateway() netip.Addr { return m.gateway }

// DNSAddr is where the DNS server listens (UDP and TCP).
func (m *Manager) DNSAddr() netip.AddrPort { return m.dns.Addr() }

// Allocate gives a VM its address (kept until Release) and records whether
// it may reach beyond the host through NAT.
func (m *Manager) Allocate(ctx context.Context, vmID string, nat bool) (Lease, error) {
	lo, hi := hostRange(m.cfg.Subnet)
	l, err := m.leases.AllocateLease(ctx, vmID, lo, hi, nat)
	if err != nil {
		return Lease{}, fmt.Errorf("allocate an address in %v: %w", m.cfg.Subnet, err)
	}
	return l, nil
}

// Release forgets a VM's address. Call Detach first.
func (m *Manager) Release(ctx context.Context, vmID string) error {
	return m.leases.ReleaseLease(ctx, vmID)
}

// Attach gives an allocated VM a TAP, its NAT rule and its DNS record. On
// error nothing of it is left.
func (m *Manager) Attach(ctx context.Context, vmID, name string) (_ Attachment, err error) {
	l, err := m.leases.GetLease(ctx, vmID)
	if err != nil {
		return Attachment{}, err
	}
	a := m.attachment(l, name)
	defer func() {
		if err != nil {
			err = errors.Join(err, m.Detach(context.WithoutCancel(ctx), vmID, name))
		}
	}()
	if a.TAP == "" {
		tap, err := m.pool.Get(ctx)
		if err != nil {
			return Attachment{}, fmt.Errorf("take a TAP: %w", err)
		}
		if err := m.leases.SetLeaseTAP(ctx, vmID, tap); err != nil {
			return Attachment{}, errors.Join(err, DeleteLink(tap))
		}
		a.TAP = tap
	} else if err := ensureTAP(a.TAP, m.cfg.Bridge); err != nil {
		return Attachment{}, err
	}
	if err := m.nat.Set(vmID, a.Addr.Addr(), a.NAT); err != nil {
		return Attachment{}, err
	}
	m.dns.Set(name, a.Addr.Addr())
	return a, nil
}

// Detach removes a VM's DNS record, NAT rules and TAP; its address stays
// allocated. Detaching twice is not an error.
func (m *Manager) Detach(ctx context.Context, vmID, name string) error {
	m.dns.Remove(name)
	errs := []error{m.nat.Remove(vmID)}
	l, err := m.leases.GetLease(ctx, vmID)
	switch {
	case errors.Is(err, api.ErrNotFound):
	case err != nil:
		errs = append(errs, err)
	case l.TAP != "":
		if err := DeleteLink(l.TAP); err != nil {
			errs = append(errs, err)
		} else {
			errs = append(errs, m.leases.SetLeaseTAP(ctx, vmID, ""))
		}
	}
	return errors.Join(errs...)
}

// Running names a VM that is running after a restart.
type Running struct{ VMID, Name string }

// Reconcile makes the host agree with running: their TAPs, NAT rules and
// DNS records are restored, and every other kiln TAP (with the prefix and
// not warm in the pool), NAT rule, DNS record and TAP record is removed.
func (m *Manager) Reconcile(ctx context.Context, running []Running) error {
	leases, err := m.leases.ListLeases(ctx)
	if err != nil {
		return err
	}
	live := map[string]string{}
	for _, r := range running {
		live[r.VMID] = r.Name
	}
	keepTAP := map[string]bool{}
	keepRule := map[string]bool{}
	var errs []error
	for _, l := range leases {
		name, ok := live[l.VMID]
		if !ok {
			if l.TAP != "" {
				m.log.Info("reconcile: removing the TAP of a vm that is not running", "vm_id", l.VMID, "tap", l.TAP)
				if err := DeleteLink(l.TAP); err != nil {
					errs = append(errs, err)
				} else {
					errs = append(errs, m.leases.SetLeaseTAP(ctx, l.VMID, ""))
				}
			}
			continue
		}
		if l.TAP == "" {
			m.log.Warn("reconcile: a running vm holds no TAP; its network stays down", "vm", name)
			continue
		}
		a := m.attachment(l, name)
		keepTAP[a.TAP], keepRule[l.VMID] = true, true
		if err := m.nat.Set(l.VMID, a.Addr.Addr(), a.NAT); err != nil {
			errs = append(errs, err)
		}
		m.dns.Set(name, a.Addr.Addr())
	}
	errs = append(errs, m.nat.Prune(keepRule))
	for _, p := range m.pool.Warm() {
		keepTAP[p] = true
	}
	links, err := netlink.LinkList()
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list links: %w", err))...)
	}
	for _, l := range links {
		n := l.Attrs().Name
		if l.Type() == "tuntap" && len(n) > len(m.cfg.TapPrefix) && n[:len(m.cfg.TapPrefix)] == m.cfg.TapPrefix && !keepTAP[n] {
			m.log.Info("reconcile: removing an orphaned TAP", "tap", n)
			errs = append(errs, DeleteLink(n))
		}
	}
	keepDNS := map[string]bool{}
	for _, r := range running {
		keepDNS[r.Name] = true
	}
	m.dns.Prune(keepDNS)
	m.pool.Refill() // only now: reconcile must not race TAPs being created
	return errors.Join(errs...)
}

// Lookup answers what the DNS server would for name (without the zone).
func (m *Manager) Lookup(name string) (netip.Addr, bool) { return m.dns.Lookup(name) }

func (m *Manager) attachment(l Lease, name string) Attachment {
	addr := hostAddr(m.cfg.Subnet, l.Host)
	return Attachment{VMID: l.VMID, Name: name, TAP: l.TAP, MAC: MAC(l.VMID),
		Addr: netip.PrefixFrom(addr, m.cfg.Subnet.Bits()), Gateway: m.gateway, DNS: m.gateway,
		Domain: m.cfg.Zone, NAT: l.NAT}
}

// Close reverts the host DNS integration, stops the DNS server and deletes
// the warm TAPs. The bridge, the NAT table and running VMs' TAPs stay: VMs
// outlive the daemon.
func (m *Manager) Close() error {
	var errs []error
	if m.hostDNS.Kind == DNSResolved {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		errs = append(errs, m.hostDNS.Revert(ctx, m.cfg.Runner))
		cancel()
		m.hostDNS = DNSIntegration{}
	}
	if m.pool != nil {
		errs = append(errs, m.pool.Close())
	}
	if m.dns != nil {
		errs = append(errs, m.dns.Close())
	}
	if m.nat != nil {
		m.nat.Close()
	}
	return errors.Join(errs...)
}

// Teardown removes the NAT table and the bridge, after Close. For tests
// and for a host giving up kiln's network; running VMs lose theirs.
func Teardown(cfg Config) error {
	return errors.Join(DeleteNATTable(cfg.NATTable), DeleteLink(cfg.Bridge))
}

// NATRuleCount counts the per-VM rules in the NAT table.
func (m *Manager) NATRuleCount() (int, error) { return m.nat.RuleCount() }

// Address is the address allocated to vmID, if any.
func (m *Manager) Address(ctx context.Context, vmID string) (netip.Addr, bool) {
	l, err := m.leases.GetLease(ctx, vmID)
	if err != nil {
		return netip.Addr{}, false
	}
	return hostAddr(m.cfg.Subnet, l.Host), true
}
