package network_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/network"
	"github.com/kilnvm/kiln/internal/store"
	"github.com/kilnvm/kiln/internal/testutil"
)

const childEnv = "KILN_NETWORK_TEST_NETNS"

// TestInNetns runs the host-side tests in a private network namespace: the
// test binary re-executes itself under `unshare -n`, so every link, rule
// and socket it makes vanishes with it and the host's tables are never
// touched. Traffic goes only to namespaces the test creates.
func TestInNetns(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		testutil.RequireRoot(t)
		testutil.RequireCommand(t, "unshare")
		cmd := exec.Command("unshare", "-n", os.Args[0], "-test.run", "^TestInNetns$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), childEnv+"=1")
		out, err := cmd.CombinedOutput()
		t.Logf("in a new network namespace:\n%s", out)
		if err != nil {
			t.Fatalf("netns tests failed: %v", err)
		}
		return
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	t.Run("SubnetConflict", testSubnetConflict)
	t.Run("AttachNATDNSReconcile", testAttachNATDNSReconcile)
	t.Run("HostDNSResolved", testHostDNSResolved) // resolved_test.go
}

func cfg() network.Config {
	return network.Config{Bridge: "kilnt0", Subnet: netip.MustParsePrefix("10.231.0.0/24"), Zone: "vm",
		NATTable: "kilntest", TapPrefix: "ktt", PoolSize: 2, PoolParallel: 2}
}

func testSubnetConflict(t *testing.T) {
	d := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "kdummy0"}} // no dummy module on every host
	if err := netlink.LinkAdd(d); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = network.DeleteLink("kdummy0") })
	addr, _ := netlink.ParseAddr("10.231.0.9/24")
	if err := netlink.AddrAdd(d, addr); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(d); err != nil {
		t.Fatal(err)
	}
	s := openStore(t)
	_, err := network.Open(context.Background(), cfg(), s)
	if !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), "kdummy0") {
		t.Fatalf("open over a taken subnet: got %v, want a conflict naming kdummy0", err)
	}
	if _, err := netlink.LinkByName("kilnt0"); err == nil {
		t.Fatal("the bridge was created although the subnet check failed")
	}
}

func openStore(t *testing.T) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func addVM(t *testing.T, s *store.Store, id string) {
	t.Helper()
	if err := s.CreateVM(context.Background(), store.VM{ID: id, Name: id, State: api.StateRunning, Image: "i", Kernel: "k", VCPUs: 1, MemoryMiB: 256, Driver: "qemu"}); err != nil {
		t.Fatal(err)
	}
}

func query(t *testing.T, server netip.AddrPort, name string) (*dns.Msg, error) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	c := &dns.Client{Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, server.String())
	return r, err
}

func resolveA(t *testing.T, server netip.AddrPort, name string) string {
	t.Helper()
	r, err := query(t, server, name)
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		return dns.RcodeToString[r.Rcode]
	}
	return r.Answer[0].(*dns.A).A.String()
}

func linkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

func kiltTAPs(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "ktt") {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

func rules(t *testing.T, m *network.Manager) int {
	t.Helper()
	n, err := m.NATRuleCount()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func testAttachNATDNSReconcile(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	for _, id := range []string{"a", "b"} {
		addVM(t, s, id)
	}
	m, err := network.Open(ctx, cfg(), s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); _ = network.Teardown(cfg()) })
	if err := m.Reconcile(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Allocate(ctx, "a", true); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Allocate(ctx, "b", false); err != nil {
		t.Fatal(err)
	}
	aa, err := m.Attach(ctx, "a", "a")
	if err != nil {
		t.Fatal(err)
	}
	ab, err := m.Attach(ctx, "b", "b")
	if err != nil {
		t.Fatal(err)
	}
	if aa.Addr.String() != "10.231.0.2/24" || ab.Addr.String() != "10.231.0.3/24" || aa.Gateway.String() != "10.231.0.1" {
		t.Fatalf("attachments: %+v %+v", aa, ab)
	}
	br, _ := netlink.LinkByName("kilnt0")
	for _, tap := range []string{aa.TAP, ab.TAP} {
		l, err := netlink.LinkByName(tap)
		if err != nil || l.Attrs().MasterIndex != br.Attrs().Index {
			t.Fatalf("TAP %s: %v (want it on the bridge)", tap, err)
		}
	}
	if n := rules(t, m); n != 2 {
		t.Fatalf("%d per-VM NAT rules, want 2 (a: masquerade + forward; b opted out)", n)
	}
	dnsAddr := m.DNSAddr()
	if got := resolveA(t, dnsAddr, "a.vm"); got != "10.231.0.2" {
		t.Fatalf("a.vm = %s", got)
	}
	if got := resolveA(t, dnsAddr, "B.VM"); got != "10.231.0.3" {
		t.Fatalf("B.VM = %s", got)
	}
	if got := resolveA(t, dnsAddr, "nope.vm"); got != "NXDOMAIN" {
		t.Fatalf("nope.vm = %s, want NXDOMAIN", got)
	}
	if got := resolveA(t, dnsAddr, "example.com"); got != "REFUSED" {
		t.Fatalf("example.com with no upstream = %s, want REFUSED", got)
	}

	t.Run("NATOnlyWhenOn", func(t *testing.T) { testNATTraffic(t) })

	// A daemon that goes away (Close) leaves running VMs' TAPs; the next
	// one restores the running VM's rules and record and removes the rest.
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	orphan, err := network.CreateTAP("ktt", "kilnt0", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := network.Open(ctx, cfg(), s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m2.Close() })
	if err := m2.Reconcile(ctx, []network.Running{{VMID: "a", Name: "a"}}); err != nil {
		t.Fatal(err)
	}
	if linkExists(orphan) || linkExists(ab.TAP) || !linkExists(aa.TAP) {
		t.Fatalf("after reconcile: orphan %v, stopped b's TAP %v, running a's TAP %v", linkExists(orphan), linkExists(ab.TAP), linkExists(aa.TAP))
	}
	if n := rules(t, m2); n != 2 {
		t.Fatalf("%d NAT rules after reconcile, want a's 2", n)
	}
	if got, b := resolveA(t, m2.DNSAddr(), "a.vm"), resolveA(t, m2.DNSAddr(), "b.vm"); got != "10.231.0.2" || b != "NXDOMAIN" {
		t.Fatalf("after reconcile a.vm = %s, b.vm = %s", got, b)
	}
	if l, _ := s.GetLease(ctx, "b"); l.TAP != "" {
		t.Fatalf("b's lease still names TAP %s", l.TAP)
	}
	// Detach and release: nothing of a is left; the warm pool is all that remains until Close.
	if err := m2.Detach(ctx, "a", "a"); err != nil {
		t.Fatal(err)
	}
	if err := m2.Detach(ctx, "a", "a"); err != nil {
		t.Fatalf("second detach: %v", err)
	}
	if err := m2.Release(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if linkExists(aa.TAP) || rules(t, m2) != 0 || resolveA(t, m2.DNSAddr(), "a.vm") != "NXDOMAIN" {
		t.Fatal("after detach: a's TAP, rules or record remain")
	}
	if err := m2.Close(); err != nil {
		t.Fatal(err)
	}
	if taps := kiltTAPs(t); len(taps) != 0 {
		t.Fatalf("TAPs left after close: %v", taps)
	}
	if err := network.Teardown(cfg()); err != nil {
		t.Fatal(err)
	}
	if linkExists("kilnt0") {
		t.Fatal("bridge left after teardown")
	}
}

// newNS creates a named network namespace, deleted at cleanup.
func newNS(t *testing.T, name string) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		panic(err) // the thread is in the wrong namespace: stop here
	}
	t.Cleanup(func() { ns.Close(); _ = netns.DeleteNamed(name) })
	return ns
}

// vethInto makes a veth pair: host end here (on master, if given), peer in
// ns with addr and a default route via gw (if valid).
func vethInto(t *testing.T, host, peer string, ns netns.NsHandle, master string, hostAddr, addr string, gw netip.Addr) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: peer}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = network.DeleteLink(host) })
	hl, _ := netlink.LinkByName(host)
	if master != "" {
		br, _ := netlink.LinkByName(master)
		if err := netlink.LinkSetMaster(hl, br); err != nil {
			t.Fatal(err)
		}
	}
	if hostAddr != "" {
		a, _ := netlink.ParseAddr(hostAddr)
		if err := netlink.AddrAdd(hl, a); err != nil {
			t.Fatal(err)
		}
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		t.Fatal(err)
	}
	pl, _ := netlink.LinkByName(peer)
	if err := netlink.LinkSetNsFd(pl, int(ns)); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	pl, err = h.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := netlink.ParseAddr(addr)
	if err := h.AddrAdd(pl, a); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{peer, "lo"} {
		l, _ := h.LinkByName(n)
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	if gw.IsValid() {
		if err := h.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: net.IP(gw.AsSlice())}); err != nil {
			t.Fatal(err)
		}
	}
}

// testNATTraffic puts a stand-in guest on the bridge (a namespace with a
// veth) and a stand-in internet host behind another veth: the guest reaches
// it with VM a's address (NAT on, source masqueraded) and not with VM b's
// (NAT off).
func testNATTraffic(t *testing.T) {
	tag := fmt.Sprint(os.Getpid())
	guest := newNS(t, "kiln-tg-"+tag)
	inet := newNS(t, "kiln-ti-"+tag)
	gw := netip.MustParseAddr("10.231.0.1")
	vethInto(t, "ktg0", "eth0", guest, "kilnt0", "", "10.231.0.2/24", gw)
	vethInto(t, "kti0", "eth0", inet, "", "198.51.100.1/24", "198.51.100.2/24", netip.Addr{})

	var ln net.Listener
	if err := testutil.InNS(inet, func() (err error) { ln, err = net.Listen("tcp4", "198.51.100.2:8080"); return }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peers := make(chan string, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			peers <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			_, _ = io.WriteString(c, "hello from the internet\n")
			c.Close()
		}
	}()
	dial := func() (string, error) {
		var got string
		err := testutil.InNS(guest, func() error {
			c, err := net.DialTimeout("tcp4", "198.51.100.2:8080", 2*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			b, err := io.ReadAll(c)
			got = string(b)
			return err
		})
		return got, err
	}
	got, err := dial()
	if err != nil || !strings.Contains(got, "hello") {
		t.Fatalf("guest with NAT on: %q, %v", got, err)
	}
	if src := <-peers; src != "198.51.100.1" {
		t.Fatalf("the internet host saw source %s, want the masqueraded 198.51.100.1", src)
	}
	// The same guest with VM b's address, whose NAT is off.
	h, err := netlink.NewHandleAt(guest)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth, _ := h.LinkByName("eth0")
	oldA, _ := netlink.ParseAddr("10.231.0.2/24")
	newA, _ := netlink.ParseAddr("10.231.0.3/24")
	if err := errors.Join(h.AddrDel(eth, oldA), h.AddrAdd(eth, newA), h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(gw.AsSlice())})); err != nil {
		t.Fatal(err)
	}
	if got, err := dial(); err == nil {
		t.Fatalf("guest with NAT off reached the internet host: %q", got)
	}
	// It still reaches the host side of the bridge (the DNS server).
	var r *dns.Msg
	if err := testutil.InNS(guest, func() (err error) { r, err = query(t, netip.MustParseAddrPort("10.231.0.1:53"), "a.vm"); return }); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("guest with NAT off cannot resolve a.vm through the gateway: %v %v", r, err)
	}
}
