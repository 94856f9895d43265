package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kilnvm/kiln/internal/testutil"
)

// netHarness is a second daemon with networking on, running inside a
// network namespace the test creates (bridge kilnt0, 10.231.0.0/24), so
// nothing touches the host's links or tables. It shares the binaries of the
// shared harness and imports the same kernel and image.
func netHarness(t *testing.T) (*harness, netns.NsHandle, string) {
	t.Helper()
	base := setup(t)
	testutil.RequireCommand(t, "ip")
	nsName := fmt.Sprintf("kiln-e2e-%d", os.Getpid())
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.NewNamed(nsName)
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		panic(err)
	}
	orig.Close()
	runtime.UnlockOSThread()
	t.Cleanup(func() { ns.Close(); _ = netns.DeleteNamed(nsName) })
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	lo, err := nh.LinkByName("lo")
	if err == nil {
		err = nh.LinkSetUp(lo) // the host side talks to the bridge's address through lo
	}
	nh.Close()
	if err != nil {
		t.Fatal(err)
	}

	root, err := os.MkdirTemp("/tmp", "kiln-e2n-")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{root: root, bin: base.bin, config: filepath.Join(root, "config.toml")}
	cfg := "network = true\nbridge = \"kilnt0\"\nsubnet = \"10.231.0.0/24\"\n"
	if err := os.WriteFile(h.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	h.env = append(os.Environ(),
		"KILN_STATE_DIR="+filepath.Join(root, "state"), "KILN_RUN_DIR="+filepath.Join(root, "run"),
		"KILN_CACHE_DIR="+filepath.Join(root, "cache"), "KILN_DEFAULT_IMAGE=bb", "KILN_DEFAULT_KERNEL=test",
		"KILN_MEMORY_MIB=512", "KILN_SOCKET_GROUP=", "KILN_BOOT_TIMEOUT=2m", "KILN_STOP_TIMEOUT=20s",
		"KILN_LOG_LEVEL=debug", "NO_COLOR=1",
		"KILN_LOCKCHECK=1") // the network's locks are checked leaves (internal/lockorder)
	t.Cleanup(func() { h.teardown() })
	t.Cleanup(func() { // before teardown removes the log
		if v := h.lockViolations(); len(v) > 0 {
			t.Errorf("lock-order violations in the network daemon's log:\n%s", strings.Join(v, "\n"))
		}
	})
	if err := startNetDaemon(h, nsName, nil); err != nil {
		t.Fatal(err)
	}
	h.mustKiln(t, "kernel", "import", "test", "--deb", testutil.DebianKernelDeb(t))
	h.mustKiln(t, "image", "import", "bb", "--rootfs-tar", testutil.BusyboxRootfsTar(t), "--kernel", "test")
	return h, ns, nsName
}

// startNetDaemon is startDaemon run through `ip netns exec`.
func startNetDaemon(h *harness, nsName string, extraEnv []string) error {
	return startNetDaemonVia(h, []string{"ip", "netns", "exec", nsName}, extraEnv)
}

// startNetDaemonVia is startDaemon run through the command prefix via,
// which puts the daemon in the test's network namespace.
func startNetDaemonVia(h *harness, via []string, extraEnv []string) error {
	logf, err := os.OpenFile(filepath.Join(h.root, "daemon.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(via[0], append(via[1:], filepath.Join(h.bin, "kiln"), "--config", h.config, "daemon")...)
	cmd.Env = append(append([]string(nil), h.env...), extraEnv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	h.mu.Lock()
	h.daemon, h.logf = cmd, logf
	h.mu.Unlock()
	go cmd.Wait()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := h.client().Version(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if syscall.Kill(cmd.Process.Pid, 0) != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("network daemon did not answer; log:\n%s", h.daemonLog())
}

// resolve asks kiln's DNS server (on the bridge) for name, from inside ns.
func resolve(t *testing.T, ns netns.NsHandle, name string) string {
	t.Helper()
	var r *dns.Msg
	err := testutil.InNS(ns, func() (err error) {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypeA)
		r, _, err = (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, "10.231.0.1:53")
		return err
	})
	if err != nil {
		t.Fatalf("resolve %s: %v", name, err)
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
		return dns.RcodeToString[r.Rcode]
	}
	return r.Answer[0].(*dns.A).A.String()
}

// taps lists kiln's TAPs in ns; attached, those a VMM holds (carrier up).
func taps(t *testing.T, ns netns.NsHandle) (all, attached []string) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "kilnt0-") {
			all = append(all, l.Attrs().Name)
			if l.Attrs().OperState == netlink.OperUp {
				attached = append(attached, l.Attrs().Name)
			}
		}
	}
	return all, attached
}

// leftovers lists the given TAPs that still exist and kiln's per-VM NAT
// rules in ns.
func leftovers(t *testing.T, ns netns.NsHandle, vmTAPs []string) []string {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		for _, v := range vmTAPs {
			if l.Attrs().Name == v {
				out = append(out, "tap "+v)
			}
		}
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	tab := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: "kiln-kilnt0"}
	for _, ch := range []string{"postrouting", "forward"} {
		rules, err := c.GetRules(tab, &nftables.Chain{Name: ch, Table: tab})
		if err != nil {
			t.Fatalf("list rules of %s: %v", ch, err)
		}
		for _, r := range rules {
			if strings.HasPrefix(string(r.UserData), "kiln-vm:") {
				out = append(out, "rule "+ch+" "+string(r.UserData))
			}
		}
	}
	return out
}

// Two VMs ping each other by name; a host process reaches a guest's HTTP
// server by <name>.vm through kiln's DNS server; after delete, and after a
// daemon SIGKILLed mid-create restarts, no TAP, rule or record remains.
func TestNetworkNamesHTTPAndCleanup(t *testing.T) {
	h, ns, nsName := netHarness(t)
	a := h.createVM(t, "na")
	b := h.createVM(t, "nb", "--no-nat")
	if a.Address != "10.231.0.2" || b.Address != "10.231.0.3" || a.DNSName != "na.vm" {
		t.Fatalf("addresses: %s (%s), %s", a.Address, a.DNSName, b.Address)
	}
	if r := h.kiln(t, "vm", "exec", "na", "--", "ping", "-c", "1", "-W", "10", "nb.vm"); r.code != 0 {
		t.Fatalf("na cannot ping nb.vm: %s\nconsole:\n%s", r, h.kiln(t, "vm", "logs", "na").stdout)
	}
	h.mustKiln(t, "vm", "exec", "nb", "--", "ping", "-c", "1", "-W", "10", "na")
	h.mustKiln(t, "vm", "exec", "nb", "--", "sh", "-c", "mkdir -p /tmp/www && echo hello-from-nb > /tmp/www/index.html && httpd -p 8080 -h /tmp/www")

	addr := resolve(t, ns, "nb.vm")
	if addr != "10.231.0.3" {
		t.Fatalf("nb.vm resolved to %s", addr)
	}
	var body string
	testutil.WaitFor(t, 30*time.Second, "the guest's httpd", func() bool {
		return testutil.InNS(ns, func() error {
			c, err := net.DialTimeout("tcp4", addr+":8080", 2*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: nb.vm\r\n\r\n")
			got, err := io.ReadAll(c)
			body = string(got)
			return err
		}) == nil
	})
	if !strings.Contains(body, "hello-from-nb") {
		t.Fatalf("http://nb.vm:8080/ answered %q", body)
	}

	_, vmTAPs := taps(t, ns)
	if len(vmTAPs) != 2 {
		t.Fatalf("TAPs attached to the two VMs: %v", vmTAPs)
	}
	h.mustKiln(t, "vm", "delete", "na", "nb")
	if got := leftovers(t, ns, vmTAPs); len(got) != 0 {
		t.Fatalf("after delete: %v", got)
	}
	if r := resolve(t, ns, "na.vm"); r != "NXDOMAIN" {
		t.Fatalf("na.vm after delete = %s", r)
	}

	// A daemon killed after the network stage of a create: the next one
	// rolls the create back, network included.
	h.killDaemon(t, syscall.SIGTERM)
	if err := startNetDaemon(h, nsName, []string{"KILN_FAILPOINT=write config"}); err != nil {
		t.Fatal(err)
	}
	_ = h.kiln(t, "vm", "create", "--name", "nc")
	h.killDaemon(t, syscall.SIGKILL)
	if got := leftovers(t, ns, nil); len(got) == 0 {
		t.Fatal("the failpoint left no NAT rule behind: it did not fire after the network stage")
	}
	before, _ := taps(t, ns)
	if err := startNetDaemon(h, nsName, nil); err != nil {
		t.Fatal(err)
	}
	if got := leftovers(t, ns, before); len(got) != 0 {
		t.Fatalf("after restart (reconcile replaces every TAP the dead daemon held): %v", got)
	}
	if r := resolve(t, ns, "nc.vm"); r != "NXDOMAIN" {
		t.Fatalf("nc.vm after restart = %s", r)
	}
	if _, err := h.client().GetVM(context.Background(), "nc"); err == nil {
		t.Fatal("the interrupted create's record survived reconcile")
	}
}
