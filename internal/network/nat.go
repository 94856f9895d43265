package network

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/kilnvm/kiln/internal/lockorder"
)

// Chains of kiln's nftables table (family ip).
const (
	chainPost    = "postrouting" // nat, srcnat: per-VM masquerade
	chainForward = "forward"     // filter: per-VM accept, then drop the bridge's other egress
)

// ruleTag marks a rule as a VM's (UserData), so it can be found again.
func ruleTag(vmID string) []byte { return []byte("kiln-vm:" + vmID) }

// NAT owns kiln's nftables table: per VM, a masquerade rule for its address
// leaving through any link but the bridge, and an accept rule in forward;
// traffic from the bridge to elsewhere that no VM rule accepts is dropped,
// so a VM with NAT off reaches the host and other VMs only.
type NAT struct {
	// Immutable after OpenNAT.
	table  string
	bridge string

	mu    lockorder.Mutex // leaf (LockNAT); guards conn (not safe for concurrent use)
	conn  *nftables.Conn
	tab   *nftables.Table
	post  *nftables.Chain
	fwd   *nftables.Chain
	added map[string]netip.Addr // VM id → address with NAT on
}

// OpenNAT (re)creates the table atomically with its chains and base rule;
// per-VM rules are added again by Set (Reconcile does, at start-up).
func OpenNAT(table, bridge string) (*NAT, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	n := &NAT{table: table, bridge: bridge, conn: c, added: map[string]netip.Addr{}}
	if old, err := c.ListTableOfFamily(table, nftables.TableFamilyIPv4); err == nil && old != nil {
		c.DelTable(old)
	}
	n.tab = c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: table})
	accept := nftables.ChainPolicyAccept
	n.post = c.AddChain(&nftables.Chain{Name: chainPost, Table: n.tab, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	n.fwd = c.AddChain(&nftables.Chain{Name: chainForward, Table: n.tab, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	// iifname BRIDGE oifname != BRIDGE drop
	c.AddRule(&nftables.Rule{Table: n.tab, Chain: n.fwd, UserData: []byte("kiln-base"), Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(bridge)},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(bridge)},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("create nftables table %s: %w", table, err)
	}
	return n, nil
}

// Set makes vmID's rules match: with nat on, masquerade and accept its
// address; with nat off, no rule (the base rule drops its egress).
func (n *NAT) Set(vmID string, addr netip.Addr, nat bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if old, ok := n.added[vmID]; ok && old == addr && nat {
		return nil
	}
	if err := n.removeLocked(vmID); err != nil {
		return err
	}
	if !nat {
		return nil
	}
	saddr := []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr.AsSlice()},
	}
	n.conn.AddRule(&nftables.Rule{Table: n.tab, Chain: n.post, UserData: ruleTag(vmID), Exprs: append(append([]expr.Any{}, saddr...),
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(n.bridge)},
		&expr.Masq{},
	)})
	n.conn.InsertRule(&nftables.Rule{Table: n.tab, Chain: n.fwd, UserData: ruleTag(vmID), Exprs: append(append([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(n.bridge)},
	}, saddr...), &expr.Verdict{Kind: expr.VerdictAccept})})
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("add NAT rules for %v: %w", addr, err)
	}
	n.added[vmID] = addr
	return nil
}

// Remove deletes vmID's rules; none is not an error.
func (n *NAT) Remove(vmID string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.removeLocked(vmID)
}

func (n *NAT) removeLocked(vmID string) error {
	tag := ruleTag(vmID)
	err := n.deleteRulesLocked(func(ud []byte) bool { return bytes.Equal(ud, tag) })
	if err == nil {
		delete(n.added, vmID)
	}
	return err
}

// Prune deletes the rules of every VM not in keep.
func (n *NAT) Prune(keep map[string]bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	err := n.deleteRulesLocked(func(ud []byte) bool {
		id, ok := bytes.CutPrefix(ud, []byte("kiln-vm:"))
		return ok && !keep[string(id)]
	})
	for id := range n.added {
		if !keep[id] {
			delete(n.added, id)
		}
	}
	return err
}

func (n *NAT) deleteRulesLocked(match func(userData []byte) bool) error {
	var errs []error
	found := false
	for _, ch := range []*nftables.Chain{n.post, n.fwd} {
		rules, err := n.conn.GetRules(n.tab, ch)
		if err != nil {
			errs = append(errs, fmt.Errorf("list nftables rules of %s: %w", ch.Name, err))
			continue
		}
		for _, r := range rules {
			if match(r.UserData) {
				if err := n.conn.DelRule(r); err != nil {
					errs = append(errs, err)
				}
				found = true
			}
		}
	}
	if found {
		if err := n.conn.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("delete nftables rules: %w", err))
		}
	}
	return errors.Join(errs...)
}

// RuleCount counts kiln's per-VM rules in the table (tests and doctor).
func (n *NAT) RuleCount() (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	count := 0
	for _, ch := range []*nftables.Chain{n.post, n.fwd} {
		rules, err := n.conn.GetRules(n.tab, ch)
		if err != nil {
			return 0, err
		}
		for _, r := range rules {
			if bytes.HasPrefix(r.UserData, []byte("kiln-vm:")) {
				count++
			}
		}
	}
	return count, nil
}

// Close releases the netlink connection; the table stays.
func (n *NAT) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	_ = n.conn.CloseLasting()
}

// DeleteNATTable removes kiln's table; an absent table is not an error.
func DeleteNATTable(table string) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	t, err := c.ListTableOfFamily(table, nftables.TableFamilyIPv4)
	if err != nil || t == nil {
		return nil
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete nftables table %s: %w", table, err)
	}
	return nil
}

// ifname is an interface name as nftables compares it: NUL-padded to 16.
func ifname(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}
