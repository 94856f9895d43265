package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/testutil"
)

// vmPorts runs `kiln vm ports --json` for one VM.
func vmPorts(t *testing.T, h *harness, name string) api.VMPorts {
	t.Helper()
	var ps []api.VMPorts
	r := h.mustKiln(t, "vm", "ports", name, "--json")
	if err := json.Unmarshal([]byte(r.stdout), &ps); err != nil || len(ps) != 1 {
		t.Fatalf("vm ports --json: %v\n%s", err, r.stdout)
	}
	return ps[0]
}

// addForward runs `kiln vm forward --json` and returns the forward.
func addForward(t *testing.T, h *harness, name, spec string) api.Forward {
	t.Helper()
	var f api.Forward
	r := h.mustKiln(t, "vm", "forward", name, spec, "--json")
	if err := json.Unmarshal([]byte(r.stdout), &f); err != nil {
		t.Fatalf("vm forward --json: %v\n%s", err, r.stdout)
	}
	return f
}

// roundTrip sends data to addr, half-closes, and returns all it reads back.
func roundTrip(addr string, data []byte) ([]byte, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, rerr := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return got, werr
	}
	return got, rerr
}

// With the guest network off, `vm ports` lists the guest's listeners (from
// /proc, through the agent) and `vm forward` moves data both ways through
// the agent channel; forwards are listed, removed, and released on stop.
func TestPortsAndForward(t *testing.T) {
	h := setup(t)
	h.createVM(t, "pf")
	h.mustKiln(t, "vm", "exec", "pf", "--", "sh", "-c",
		"mkdir -p /tmp/www && echo hello-through-forward > /tmp/www/index.html && httpd -p 8080 -h /tmp/www && "+
			"(nc -ll -p 9000 -e cat </dev/null >/dev/null 2>&1 &)")

	var ps api.VMPorts
	testutil.WaitFor(t, 30*time.Second, "httpd and nc listening in the guest", func() bool {
		ps = vmPorts(t, h, "pf")
		var n int
		for _, p := range ps.Ports {
			if p.Port == 8080 || p.Port == 9000 {
				n++
			}
		}
		return n == 2
	})
	for _, p := range ps.Ports {
		if p.Port == 8080 && (p.Process != "httpd" || p.Endpoint != "") {
			t.Fatalf("port 8080: %+v (want process httpd, no endpoint with the network off)", p)
		}
	}
	if !strings.Contains(ps.Note, "network is off") {
		t.Fatalf("note with the network off: %q", ps.Note)
	}
	if r := h.mustKiln(t, "vm", "ports", "pf"); !strings.Contains(r.stdout, "httpd[") || !strings.Contains(r.stderr, "kiln vm forward pf") {
		t.Fatalf("human ports output:\n%s", r)
	}

	// HTTP through a forward on a free host port.
	web := addForward(t, h, "pf", "0:8080")
	if web.HostPort == 0 || web.HostAddr != "127.0.0.1" || web.GuestPort != 8080 {
		t.Fatalf("forward: %+v", web)
	}
	webAddr := net.JoinHostPort(web.HostAddr, strconv.Itoa(web.HostPort))
	got, err := roundTrip(webAddr, []byte("GET / HTTP/1.0\r\n\r\n"))
	if err != nil || !bytes.Contains(got, []byte("hello-through-forward")) {
		t.Fatalf("GET through the forward: %v\n%s", err, got)
	}

	// 512 KiB each way through an echo server.
	echo := addForward(t, h, "pf", "0:9000")
	data := make([]byte, 512<<10)
	_, _ = rand.Read(data)
	got, err = roundTrip(net.JoinHostPort(echo.HostAddr, strconv.Itoa(echo.HostPort)), data)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("echo through the forward: %v; sent %d bytes, got %d back", err, len(data), len(got))
	}

	// Listed; shown in `vm ports`.
	if r := h.mustKiln(t, "vm", "forwards", "pf"); !strings.Contains(r.stdout, fmt.Sprintf("127.0.0.1:%d", web.HostPort)) ||
		!strings.Contains(r.stdout, fmt.Sprintf("127.0.0.1:%d", echo.HostPort)) {
		t.Fatalf("vm forwards:\n%s", r)
	}
	for _, p := range vmPorts(t, h, "pf").Ports {
		if p.Port == 8080 && (len(p.Forwards) != 1 || p.Forwards[0] != webAddr) {
			t.Fatalf("port 8080 forwards: %v, want [%s]", p.Forwards, webAddr)
		}
	}

	// Bad input: clear errors, nothing added.
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"vm", "forward", "pf", strconv.Itoa(web.HostPort) + ":80"}, 13, "in use"},
		{[]string{"vm", "forward", "pf", "http"}, 12, "GUEST_PORT"},
		{[]string{"vm", "forward", "pf", "80:70000"}, 12, "GUEST_PORT"},
		{[]string{"vm", "forward", "nosuchvm", "0:80"}, 10, "nosuchvm"},
		{[]string{"vm", "forward", "--rm", "pf", "1"}, 10, "no forward"},
	} {
		r := h.kiln(t, c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.msg) {
			t.Errorf("want exit %d mentioning %q: %s", c.code, c.msg, r)
		}
	}
	var fs []api.Forward
	if err := json.Unmarshal([]byte(h.mustKiln(t, "vm", "forward", "--list", "--json").stdout), &fs); err != nil || len(fs) != 2 {
		t.Fatalf("forwards after failed adds: %v %+v", err, fs)
	}

	// A connection to a guest port nobody listens on is closed at once.
	dead := addForward(t, h, "pf", "0:9999")
	if got, err := roundTrip(net.JoinHostPort(dead.HostAddr, strconv.Itoa(dead.HostPort)), []byte("x")); len(got) != 0 {
		t.Fatalf("forward to a closed guest port answered %q (%v)", got, err)
	}

	// Removed: the host port stops answering.
	h.mustKiln(t, "vm", "forward", "--rm", "pf", strconv.Itoa(web.HostPort))
	if _, err := net.DialTimeout("tcp", webAddr, 2*time.Second); err == nil {
		t.Fatal("removed forward still accepts")
	}

	// Released when the VM stops.
	h.mustKiln(t, "vm", "stop", "pf")
	if _, err := net.DialTimeout("tcp", net.JoinHostPort(echo.HostAddr, strconv.Itoa(echo.HostPort)), 2*time.Second); err == nil {
		t.Fatal("forward of a stopped VM still accepts")
	}
	if r := h.mustKiln(t, "vm", "forwards", "--json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("forwards after stop: %s", r.stdout)
	}
}
