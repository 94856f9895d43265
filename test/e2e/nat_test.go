package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kilnvm/kiln/internal/testutil"
)

// internetNS makes a stand-in "internet" host: a namespace joined to the
// daemon's namespace by a veth pair (daemon side 192.0.2.1/24, internet
// side 192.0.2.2/24) with no route back to the VM subnet, and an HTTP
// server on 192.0.2.2:8000 that answers with the caller's address. Only
// masqueraded traffic can get an answer.
func internetNS(t *testing.T, daemonNS netns.NsHandle) {
	t.Helper()
	name := fmt.Sprintf("kiln-inet-%d", os.Getpid())
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ins, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		panic(serr)
	}
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ins.Close(); _ = netns.DeleteNamed(name) }) // deleting the namespace deletes the veth pair

	dh, err := netlink.NewHandleAt(daemonNS)
	if err != nil {
		t.Fatal(err)
	}
	defer dh.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "kt-up"}, PeerName: "kt-inet", PeerNamespace: netlink.NsFd(ins)}
	if err := dh.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	ih, err := netlink.NewHandleAt(ins)
	if err != nil {
		t.Fatal(err)
	}
	defer ih.Close()
	for _, side := range []struct {
		h          *netlink.Handle
		link, addr string
	}{{dh, "kt-up", "192.0.2.1/24"}, {ih, "kt-inet", "192.0.2.2/24"}, {ih, "lo", ""}} {
		l, err := side.h.LinkByName(side.link)
		if err != nil {
			t.Fatal(err)
		}
		if side.addr != "" {
			a, _ := netlink.ParseAddr(side.addr)
			if err := side.h.AddrAdd(l, a); err != nil {
				t.Fatalf("address %s: %v", side.addr, err)
			}
		}
		if err := side.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}

	var l net.Listener
	if err := testutil.InNS(ins, func() (err error) { l, err = net.Listen("tcp4", "192.0.2.2:8000"); return err }); err != nil {
		t.Fatalf("listen in the internet namespace: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "internet-saw-%s\n", host)
	})}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
}

// A guest reaches a host outside (another namespace) through NAT, seen
// there with the host's address; a --no-nat guest cannot.
func TestNetworkNAT(t *testing.T) {
	h, ns, _ := netHarness(t)
	internetNS(t, ns)
	h.createVM(t, "nat")
	h.createVM(t, "nonat", "--no-nat")

	// busybox-static's wget crashes in glibc's static resolver; nc does not.
	get := `printf 'GET / HTTP/1.0\r\n\r\n' | nc -w %d 192.0.2.2 8000`
	r := h.kiln(t, "vm", "exec", "nat", "--", "sh", "-c", fmt.Sprintf(get, 10))
	if r.code != 0 || !strings.Contains(r.stdout, "internet-saw-192.0.2.1") {
		t.Fatalf("the NAT guest did not reach the internet host masqueraded: %s", r)
	}
	r = h.kiln(t, "vm", "exec", "nonat", "--", "sh", "-c", fmt.Sprintf(get, 5))
	if r.code == 0 || strings.Contains(r.stdout, "internet-saw") {
		t.Fatalf("the --no-nat guest reached the internet host: %s", r)
	}
	// It still reaches the host (the bridge address) and the other VM.
	h.mustKiln(t, "vm", "exec", "nonat", "--", "ping", "-c", "1", "-W", "10", "nat.vm")
}
