package agent

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/agent/reaper"
)

func TestLoadModules(t *testing.T) {
	dir := t.TempDir()
	n, err := LoadModules(filepath.Join(dir, "missing.list"), func(string, error) { t.Error("warned") })
	if n != 0 || err != nil {
		t.Errorf("missing list: %d %v", n, err)
	}
	// Paths that cannot be loaded are reported and skipped; comments and
	// blank lines are ignored. (Loading real modules would change the
	// host's kernel, so only the failure path runs here.)
	list := filepath.Join(dir, "modules.list")
	missing := filepath.Join(dir, "virtio_ring.ko")
	os.WriteFile(list, []byte("# modules\n\n"+missing+"\n  \n"), 0o644)
	var warned []string
	n, err = LoadModules(list, func(p string, err error) {
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("warning for %s: %v", p, err)
		}
		warned = append(warned, p)
	})
	if err != nil || n != 0 || len(warned) != 1 || warned[0] != missing {
		t.Errorf("got n=%d err=%v warned=%v", n, err, warned)
	}
}

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		in    string
		state byte
		flags uint64
		ok    bool
	}{
		{"1 (systemd) S 0 1 1 0 -1 4194560 1 2", 'S', 4194560, true},
		{"2 (kthreadd) S 0 0 0 0 -1 2129984 0", 'S', 2129984, true},
		{"77 (a) b (c)) Z 1 77 77 0 -1 4194372 0", 'Z', 4194372, true},
		{"garbage", 0, 0, false},
		{"3 (x) R 1 2", 0, 0, false},
	} {
		state, flags, ok := parseStat([]byte(tc.in))
		if ok != tc.ok || state != tc.state || flags != tc.flags {
			t.Errorf("%q: got %c %d %v", tc.in, state, flags, ok)
		}
	}
	// This process is a user process and is not listed as such (self).
	for _, pid := range userProcesses() {
		if pid == os.Getpid() {
			t.Error("userProcesses lists the caller")
		}
	}
	if b, err := os.ReadFile("/proc/2/stat"); err == nil {
		if _, flags, ok := parseStat(b); !ok || flags&pfKthread == 0 {
			t.Errorf("kthreadd not recognised as a kernel thread: %q", b)
		}
	}
}

func TestHealthFunc(t *testing.T) {
	h := HealthFunc("v1", false)()
	host, _ := os.Hostname()
	if h.Version != "v1" || h.Hostname != host || h.Kernel == "" || h.Uptime <= 0 || h.PID1 == "" || h.PID1 == "kiln-agent" {
		t.Errorf("health %+v", h)
	}
	if HealthFunc("v1", true)().PID1 != "kiln-agent" {
		t.Error("as PID 1 the agent names itself")
	}
}

// TestServeListener runs the vsock accept loop on a Unix listener (no
// vsock here) with the real SSH server.
func TestServeListener(t *testing.T) {
	host, auth := testKeys(t)
	cfg := validConfig(t)
	cfg["host_key"], cfg["authorized_keys"] = host, []string{auth}
	b, _ := json.Marshal(cfg)
	vm, err := ParseConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	// Authorise a client key whose private half the test holds.
	_, cpriv, _ := ed25519Key()
	csigner, _ := ssh.NewSignerFromKey(cpriv)
	vm.AuthorizedKeys = append(vm.AuthorizedKeys, string(ssh.MarshalAuthorizedKey(csigner.PublicKey())))

	r := reaper.New(nil)
	defer r.Close()
	srv, err := NewSSHServer(vm, r, nil, HealthFunc("t", false), nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- serveListener(ctx, l, srv.ServeConn, discardLogger()) }()

	hostSigner, _ := ssh.ParsePrivateKey([]byte(host))
	cl, err := ssh.Dial("unix", l.Addr().String(), &ssh.ClientConfig{
		User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(csigner)},
		HostKeyCallback: ssh.FixedHostKey(hostSigner.PublicKey()), Timeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ok, payload, err := cl.SendRequest(proto.RequestHealth, true, nil)
	if err != nil || !ok || !strings.Contains(string(payload), `"version":"t"`) {
		t.Errorf("health: %v %v %s", ok, err, payload)
	}
	// No poweroff hook: refused, with a reason.
	if ok, payload, _ := cl.SendRequest(proto.RequestPoweroff, true, nil); ok || !strings.Contains(string(payload), "not supported") {
		t.Errorf("poweroff without hook: %v %q", ok, payload)
	}
	cl.Close()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("serveListener: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serveListener did not stop")
	}
}
