package guest

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/agent"
	"github.com/kilnvm/kiln/internal/agent/reaper"
	"github.com/kilnvm/kiln/internal/agent/sshd"
)

// harness runs the real agent side (serial loop, yamux, SSH server,
// reaper) in-process, behind a fake of QEMU's virtio-serial chardev.
type harness struct {
	t        *testing.T
	hostKey  KeyPair
	userKey  KeyPair
	chardev  *fakeChardev
	poweroff chan struct{}
	srv      *sshd.Server
	log      *slog.Logger

	mu        sync.Mutex
	stopAgent func() // stops the running agent loop
}

type harnessOption func(*sshd.Config)

// sharedReaper: one reaper per process (it reaps every child).
var sharedReaper = sync.OnceValue(func() *reaper.Reaper { return reaper.New(nil) })

func newHarness(t *testing.T, opts ...harnessOption) *harness {
	t.Helper()
	h := &harness{t: t, poweroff: make(chan struct{}, 4)}
	var err error
	if h.hostKey, err = NewKeyPair(); err != nil {
		t.Fatal(err)
	}
	if h.userKey, err = NewKeyPair(); err != nil {
		t.Fatal(err)
	}
	cfg, err := agent.ParseConfig([]byte(`{"host_key":` + jsonString(string(h.hostKey.PrivatePEM)) +
		`,"authorized_keys":[` + jsonString(h.userKey.AuthorizedKey) + `],"env":["KILN_TEST=from-config"]}`))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := agent.AuthorizedKeys(cfg)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sc := sshd.Config{
		HostKey:        h.hostKey.Signer,
		AuthorizedKeys: keys,
		Reaper:         sharedReaper(),
		Env:            cfg.Env,
		Health:         agent.HealthFunc("test", false),
		PowerOff:       func() { h.poweroff <- struct{}{} },
		Logger:         log,
	}
	for _, o := range opts {
		o(&sc)
	}
	srv, err := sshd.New(sc)
	if err != nil {
		t.Fatal(err)
	}
	h.srv, h.log = srv, log
	h.chardev = newFakeChardev()
	h.startAgent()
	t.Cleanup(func() {
		h.mu.Lock()
		stop := h.stopAgent
		h.mu.Unlock()
		stop()
		h.chardev.Close()
	})
	return h
}

// startAgent starts the agent's serial loop (stopping the running one, as
// a restart of the agent service would).
func (h *harness) startAgent() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopAgent != nil {
		h.stopAgent()
	}
	ctx, cancel := context.WithCancel(context.Background())
	loop := &agent.SerialServer{Open: h.chardev.Open, Serve: h.srv.ServeConn, Logger: h.log}
	done := make(chan error, 1)
	go func() { done <- loop.Run(ctx) }()
	h.stopAgent = func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			h.t.Errorf("agent loop did not stop")
		}
	}
}

func (h *harness) dial(ctx context.Context) (net.Conn, error) { return h.chardev.Dial(ctx) }

func (h *harness) channel(t *testing.T) *SerialChannel {
	t.Helper()
	ch, err := NewSerialChannel(SerialConfig{Dial: h.dial, SocketPath: "test-pair", HelloTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.Close() })
	return ch
}

func (h *harness) client(t *testing.T) *Client {
	t.Helper()
	c := NewClient(h.channel(t), h.hostKey.Public, h.userKey.Signer)
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func jsonString(s string) string {
	b := []byte{'"'}
	for _, r := range s {
		switch r {
		case '"', '\\':
			b = append(b, '\\', byte(r))
		case '\n':
			b = append(b, '\\', 'n')
		default:
			b = append(b, string(r)...)
		}
	}
	return string(append(b, '"'))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
