package guest

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/agent/ports"
	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/agent/sshd"
	"github.com/kilnvm/kiln/internal/api"
)

// The agent lists this process's listener (the "guest" is this host here)
// and splices a direct-tcpip connection to it, both ways.
func TestPortsAndDialGuest(t *testing.T) {
	h := newHarness(t, func(c *sshd.Config) {
		c.Ports = func() ([]proto.ListeningPort, error) { return ports.Listening("/proc") }
	})
	c := h.client(t)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	port := l.Addr().(*net.TCPAddr).Port
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		b, _ := io.ReadAll(conn) // until the client half-closes
		_, _ = conn.Write([]byte("echo:" + string(b)))
	}()

	ps, err := c.Ports(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range ps {
		found = found || (p.Port == port && p.Address == "127.0.0.1")
	}
	if !found {
		t.Fatalf("listener on %d not in %v", port, ps)
	}

	conn, err := c.DialGuest(testCtx(t), "127.0.0.1", port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	conn.(interface{ CloseWrite() error }).CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "echo:ping" {
		t.Fatalf("read %q, %v", got, err)
	}

	// Nothing listens: the agent refuses, class unavailable, and the
	// connection stays usable.
	l2, _ := net.Listen("tcp4", "127.0.0.1:0")
	closed := l2.Addr().(*net.TCPAddr).Port
	l2.Close()
	if _, err := c.DialGuest(testCtx(t), "127.0.0.1", closed); !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("dial a closed port: %v", err)
	}
	if _, err := c.Health(testCtx(t)); err != nil {
		t.Fatalf("health after a refused dial: %v", err)
	}
}

func TestPortsUnsupported(t *testing.T) {
	h := newHarness(t) // no Ports func
	c := h.client(t)
	if _, err := c.Ports(testCtx(t)); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Fatalf("ports without support: %v", err)
	}
}
