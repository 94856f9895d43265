package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/agent/sshd"
	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/testutil"
)

func TestExecExitCodes(t *testing.T) {
	h := newHarness(t)
	c := h.client(t)
	ctx := testCtx(t)
	for _, tc := range []struct {
		cmd  string
		want int
	}{
		{"true", 0},
		{"exit 7", 7},
		{"kiln-no-such-command", 127},
		{"kill -KILL $$", 137},
	} {
		var stderr bytes.Buffer
		code, err := c.Exec(ctx, ExecRequest{Command: tc.cmd, Stderr: &stderr})
		if err != nil {
			t.Fatalf("%q: %v", tc.cmd, err)
		}
		if code != tc.want {
			t.Errorf("%q: exit code %d, want %d (stderr %q)", tc.cmd, code, tc.want, stderr.String())
		}
	}
}

func TestExecStdio(t *testing.T) {
	h := newHarness(t)
	c := h.client(t)
	ctx := testCtx(t)
	var out, errb bytes.Buffer
	code, err := c.Exec(ctx, ExecRequest{Command: "cat; echo to-stderr >&2", Stdin: strings.NewReader("hello from stdin\n"), Stdout: &out, Stderr: &errb})
	if err != nil || code != 0 {
		t.Fatalf("exec: code %d err %v", code, err)
	}
	if out.String() != "hello from stdin\n" {
		t.Errorf("stdout %q", out.String())
	}
	if errb.String() != "to-stderr\n" {
		t.Errorf("stderr %q", errb.String())
	}
}

func TestExecMissingShell(t *testing.T) {
	h := newHarness(t, func(c *sshd.Config) {
		c.ExecShell = "/nonexistent/sh"
		c.LoginShells = []string{"/nonexistent/bash"}
	})
	c := h.client(t)
	ctx := testCtx(t)
	var stderr bytes.Buffer
	code, err := c.Exec(ctx, ExecRequest{Command: "true", Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	if code != 127 {
		t.Errorf("exit code %d, want 127", code)
	}
	if !strings.Contains(stderr.String(), "/nonexistent/sh") || !strings.Contains(stderr.String(), "does not exist") {
		t.Errorf("stderr %q does not explain the missing shell", stderr.String())
	}
	// A login shell with none available: same code, and the message comes
	// through the terminal in PTY mode.
	var out bytes.Buffer
	code, err = c.Exec(ctx, ExecRequest{Stdout: &out, PTY: &PTY{Rows: 24, Cols: 80}})
	if err != nil || code != 127 {
		t.Fatalf("login shell: code %d err %v", code, err)
	}
	if !strings.Contains(out.String(), "no login shell") {
		t.Errorf("pty output %q does not explain the missing shell", out.String())
	}
}

func TestExecEnvironment(t *testing.T) {
	h := newHarness(t)
	c := h.client(t)
	var out bytes.Buffer
	code, err := c.Exec(testCtx(t), ExecRequest{
		Command: `echo "$HOME|$PWD|$KILN_TEST|$FROM_REQ|$USER|$PATH"`,
		Env:     []string{"FROM_REQ=a b", "KILN_TEST=overridden"},
		Stdout:  &out,
	})
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	want := "/root|/root|overridden|a b|root|" + sshd.DefaultPath + "\n"
	if out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
	if _, err := c.Exec(testCtx(t), ExecRequest{Command: "true", Env: []string{"NOEQUALS"}}); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("bad env entry: err %v, want bad request", err)
	}
}

func TestExecLargeOutputIsComplete(t *testing.T) {
	h := newHarness(t)
	c := h.client(t)
	var out countWriter
	code, err := c.Exec(testCtx(t), ExecRequest{Command: "head -c 3000000 /dev/zero", Stdout: &out})
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	if out.n != 3000000 {
		t.Errorf("got %d bytes, want 3000000", out.n)
	}
}

func TestExecBackgroundChildDoesNotHoldSession(t *testing.T) {
	h := newHarness(t)
	c := h.client(t)
	var out bytes.Buffer
	start := time.Now()
	// The background sleep keeps stdout open; the session must end soon
	// after the shell exits anyway.
	code, err := c.Exec(testCtx(t), ExecRequest{Command: "sleep 60 & echo $!; echo done", Stdout: &out})
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	lines := strings.Fields(out.String())
	if len(lines) != 2 || lines[1] != "done" {
		t.Fatalf("output %q", out.String())
	}
	if pid, err := strconv.Atoi(lines[0]); err == nil {
		t.Cleanup(func() { _ = unix.Kill(pid, unix.SIGKILL) })
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("exec took %s: the session waited for the background child", d)
	}
}

func TestExecPTYWindowSize(t *testing.T) {
	h := newHarness(t)
	c := h.client(t)
	out := newWatchWriter()
	resize := make(chan WinSize, 1)
	done := make(chan struct{})
	var code int
	var err error
	go func() {
		defer close(done)
		code, err = c.Exec(testCtx(t), ExecRequest{
			Command: `stty size; [ -t 0 ] && echo tty; echo "TERM=$TERM"; echo ready; ` +
				`while [ "$(stty size)" = "30 100" ]; do sleep 0.05; done; stty size`,
			Stdout: out,
			PTY:    &PTY{Term: "vt100", Rows: 30, Cols: 100},
			Resize: resize,
		})
	}()
	select {
	case <-out.waitFor("ready"):
	case <-done:
		t.Fatalf("command ended early: code %d err %v output %q", code, err, out.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("no ready line; output %q", out.String())
	}
	resize <- WinSize{Rows: 40, Cols: 120}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("command did not see the resize; output %q", out.String())
	}
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	got := strings.ReplaceAll(out.String(), "\r\n", "\n")
	want := "30 100\ntty\nTERM=vt100\nready\n40 120\n"
	if got != want {
		t.Errorf("output %q, want %q", got, want)
	}
}

func TestExecCancelSignalsCommand(t *testing.T) {
	h := newHarness(t)
	c := h.client(t)
	out := newWatchWriter()
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	type result struct {
		code int
		err  error
	}
	res := make(chan result, 1)
	go func() {
		code, err := c.Exec(ctx, ExecRequest{Command: "echo $$; exec sleep 300", Stdout: out})
		res <- result{code, err}
	}()
	select {
	case <-out.waitFor("\n"):
	case <-time.After(30 * time.Second):
		t.Fatal("no pid printed")
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Kill(pid, unix.SIGKILL) })
	cancel()
	var r result
	select {
	case r = <-res:
	case <-time.After(30 * time.Second):
		t.Fatal("Exec did not return after cancel")
	}
	if !errors.Is(r.err, context.Canceled) || !errors.Is(r.err, api.ErrCanceled) {
		t.Errorf("err %v, want context canceled of class canceled", r.err)
	}
	if r.code != 128+int(unix.SIGTERM) {
		t.Errorf("code %d, want %d (SIGTERM)", r.code, 128+int(unix.SIGTERM))
	}
	testutil.WaitFor(t, 10*time.Second, "the sleep to be gone", func() bool {
		return unix.Kill(pid, 0) == unix.ESRCH
	})
}

func TestRawSessionSignal(t *testing.T) {
	h := newHarness(t)
	c := h.client(t)
	cl, err := c.Conn(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	sess, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	out := newWatchWriter()
	sess.Stdout = out
	if err := sess.Start("echo started; sleep 300"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-out.waitFor("started"):
	case <-time.After(30 * time.Second):
		t.Fatal("command did not start")
	}
	if err := sess.Signal(ssh.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = sess.Wait()
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.Signal() != "KILL" {
		t.Fatalf("wait: %v, want exit signal KILL", err)
	}
	if code, _ := exitCode(err); code != 137 {
		t.Errorf("exit code %d, want 137", code)
	}
}

func TestConcurrentExecExitCodes(t *testing.T) {
	h := newHarness(t)
	c := h.client(t)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			var stdout bytes.Buffer
			code, err := c.Exec(ctx, ExecRequest{Command: fmt.Sprintf("sh -c 'exit %d' & wait $!; exit $?", i+1), Stdout: &stdout})
			if err != nil || code != i+1 {
				t.Errorf("exec %d: code %d err %v", i+1, code, err)
			}
		})
	}
	wg.Wait()
}

func TestHealthAndPoweroff(t *testing.T) {
	h := newHarness(t)
	c := h.client(t)
	ctx := testCtx(t)
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	hl, err := c.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if hl.Version != "test" || hl.Hostname != host || hl.Kernel == "" || hl.Uptime <= 0 || hl.PID1 == "" {
		t.Errorf("health %+v", hl)
	}
	if err := c.Poweroff(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.poweroff:
	case <-time.After(10 * time.Second):
		t.Fatal("poweroff hook not called")
	}
	// A second request is acknowledged but powers off only once.
	if err := c.Poweroff(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.poweroff:
		t.Error("poweroff hook called twice")
	case <-time.After(200 * time.Millisecond):
	}
}

func TestWrongKeysAreRefused(t *testing.T) {
	h := newHarness(t)
	other, err := NewKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)

	// The port takes one host connection at a time (as QEMU's chardev
	// socket does), so each client's channel is closed before the next.
	ch1 := h.channel(t)
	wrongUser := NewClient(ch1, h.hostKey.Public, other.Signer)
	if _, err := wrongUser.Exec(ctx, ExecRequest{Command: "true"}); !errors.Is(err, api.ErrPermissionDenied) || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Errorf("unauthorized client key: err %v", err)
	}
	// Retrying cannot help: WaitReady gives up at once.
	if err := wrongUser.WaitReady(ctx); !errors.Is(err, api.ErrPermissionDenied) {
		t.Errorf("WaitReady with an unauthorized key: %v", err)
	}
	wrongUser.Close()
	ch1.Close()

	ch2 := h.channel(t)
	wrongHost := NewClient(ch2, other.Public, h.userKey.Signer)
	if _, err := wrongHost.Health(ctx); !errors.Is(err, api.ErrPermissionDenied) || !strings.Contains(err.Error(), "host key mismatch") ||
		!strings.Contains(err.Error(), ssh.FingerprintSHA256(h.hostKey.Public)) {
		t.Errorf("unexpected host key: err %v", err)
	}
	wrongHost.Close()
	ch2.Close()

	// The agent still serves the right client afterwards.
	if _, err := h.client(t).Health(ctx); err != nil {
		t.Errorf("right keys after refusals: %v", err)
	}
}

func TestReconnectAfterHostRestart(t *testing.T) {
	h := newHarness(t)
	ctx := testCtx(t)

	// The first daemon connects, works, and dies.
	ch1 := h.channel(t)
	c1 := NewClient(ch1, h.hostKey.Public, h.userKey.Signer)
	if code, err := c1.Exec(ctx, ExecRequest{Command: "exit 3"}); err != nil || code != 3 {
		t.Fatalf("first daemon: code %d err %v", code, err)
	}
	c1.Close()
	ch1.Close()

	// A restarted daemon: a new channel on a new connection, while the
	// agent re-opens its port.
	c2 := h.client(t)
	if code, err := c2.Exec(ctx, ExecRequest{Command: "exit 4"}); err != nil || code != 4 {
		t.Fatalf("restarted daemon: code %d err %v", code, err)
	}

	// The connection breaks under a live channel: the next call
	// reconnects transparently.
	h.chardev.dropHost()
	testutil.WaitFor(t, 10*time.Second, "the client to notice the broken connection", func() bool {
		cl, _ := c2.current()
		return cl == nil
	})
	if code, err := c2.Exec(ctx, ExecRequest{Command: "exit 5"}); err != nil || code != 5 {
		t.Fatalf("after the connection broke: code %d err %v", code, err)
	}
	if n := h.chardev.dials(); n != 3 {
		t.Errorf("%d connections made, want 3", n)
	}
}

func TestReconnectAfterAgentRestart(t *testing.T) {
	h := newHarness(t)
	ctx := testCtx(t)
	c := h.client(t)
	if code, err := c.Exec(ctx, ExecRequest{Command: "exit 3"}); err != nil || code != 3 {
		t.Fatalf("before the restart: code %d err %v", code, err)
	}
	// The agent service restarts; the host's connection to the chardev
	// stays up, so only the agent's reset marker tells the host.
	h.startAgent()
	testutil.WaitFor(t, 10*time.Second, "the client to drop the dead session", func() bool {
		cl, _ := c.current()
		return cl == nil
	})
	if code, err := c.Exec(ctx, ExecRequest{Command: "exit 4"}); err != nil || code != 4 {
		t.Fatalf("after the restart: code %d err %v", code, err)
	}
	if n := h.chardev.dials(); n != 2 {
		t.Errorf("%d connections made, want 2", n)
	}
}

func TestStaleBytesBeforeHelloAreDiscarded(t *testing.T) {
	h := newHarness(t)
	// Bytes of a dead session in the guest's port, seen by the host ...
	h.chardev.hostGarbage = []byte("\x00\x01yamux-frame-remains KILN-HELLO\nKILN-HELLO-0\n")
	ch, err := NewSerialChannel(SerialConfig{
		SocketPath: "test-pair",
		Dial: func(ctx context.Context) (net.Conn, error) {
			conn, err := h.dial(ctx)
			if err != nil {
				return nil, err
			}
			// ... and bytes of a dead host session, seen by the agent.
			_, err = conn.Write([]byte("\x00\x00\x00\x01garbage\nKILN-HELLO-\n\xff"))
			return conn, err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	c := NewClient(ch, h.hostKey.Public, h.userKey.Signer)
	defer c.Close()
	var out bytes.Buffer
	if code, err := c.Exec(testCtx(t), ExecRequest{Command: "echo ok", Stdout: &out}); err != nil || code != 0 || out.String() != "ok\n" {
		t.Fatalf("code %d err %v out %q", code, err, out.String())
	}
}

func TestWaitReadyReportsLastError(t *testing.T) {
	// Nobody answers on the other end of the socket: no agent yet.
	var mu sync.Mutex
	var ends []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range ends {
			c.Close()
		}
	})
	ch, err := NewSerialChannel(SerialConfig{
		SocketPath:   "silent",
		HelloTimeout: 200 * time.Millisecond,
		Dial: func(ctx context.Context) (net.Conn, error) {
			a, b := net.Pipe()
			mu.Lock()
			ends = append(ends, b)
			mu.Unlock()
			go io.Copy(io.Discard, b)
			return a, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	kp, _ := NewKeyPair()
	c := NewClient(ch, kp.Public, kp.Signer)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err = c.WaitReady(ctx)
	if !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "no hello from the guest agent") {
		t.Errorf("err %v, want unavailable naming the missing hello", err)
	}
}

func TestDirectTCPIPAndProxyConn(t *testing.T) {
	h := newHarness(t)
	c := h.client(t)
	ctx := testCtx(t)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		io.Copy(conn, conn) // echo
	}()
	cl, err := c.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fwd, err := cl.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fwd.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(fwd, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo through direct-tcpip: %q %v", buf, err)
	}
	fwd.Close()
	if _, err := cl.Dial("tcp", "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("dial to a closed port: err %v", err)
	}

	// A raw stream with our own SSH client over it, as `kiln vm proxy`.
	raw, err := c.ProxyConn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sconn, chans, reqs, err := ssh.NewClientConn(raw, "vm", &ssh.ClientConfig{
		User:            "anyone",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(h.userKey.Signer)},
		HostKeyCallback: ssh.FixedHostKey(h.hostKey.Public),
	})
	if err != nil {
		t.Fatal(err)
	}
	own := ssh.NewClient(sconn, chans, reqs)
	defer own.Close()
	ps, err := own.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	outb, err := ps.Output("echo via-proxy")
	if err != nil || string(outb) != "via-proxy\n" {
		t.Fatalf("exec over proxy conn: %q %v", outb, err)
	}
}

type countWriter struct{ n int }

func (w *countWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

// watchWriter collects output and lets a test wait for a substring.
type watchWriter struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newWatchWriter() *watchWriter { return &watchWriter{changed: make(chan struct{})} }

func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	close(w.changed)
	w.changed = make(chan struct{})
	return len(p), nil
}

func (w *watchWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// waitFor returns a channel closed once the output contains s.
func (w *watchWriter) waitFor(s string) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		for {
			w.mu.Lock()
			has, changed := strings.Contains(w.buf.String(), s), w.changed
			w.mu.Unlock()
			if has {
				close(done)
				return
			}
			<-changed
		}
	}()
	return done
}

func TestOpenReplacesSessionThatStoppedAnswering(t *testing.T) {
	h := newHarness(t)
	ctx := testCtx(t)
	ch, err := NewSerialChannel(SerialConfig{SocketPath: "fake", Dial: h.dial, PingTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	s1, err := ch.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s1.Close()

	// The agent goes silent without a word (no reset marker reaches the
	// host): only the ping in Open can tell.
	h.mu.Lock()
	h.stopAgent()
	h.stopAgent = func() {}
	h.mu.Unlock()

	type result struct {
		c   net.Conn
		err error
	}
	res := make(chan result, 1)
	go func() {
		c, err := ch.Open(ctx)
		res <- result{c, err}
	}()
	testutil.WaitFor(t, 10*time.Second, "a new connection after the failed ping", func() bool { return h.chardev.dials() == 2 })
	h.startAgent()
	r := <-res
	if r.err != nil {
		t.Fatalf("open after the agent came back: %v", r.err)
	}
	defer r.c.Close()
	// The stream reaches a working SSH server.
	c := NewClient(fixedDialer{r.c}, h.hostKey.Public, h.userKey.Signer)
	defer c.Close()
	if _, err := c.Health(ctx); err != nil {
		t.Fatalf("health over the new stream: %v", err)
	}
}

func TestNewSerialChannelNeedsASocket(t *testing.T) {
	if _, err := NewSerialChannel(SerialConfig{}); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("err %v, want bad request", err)
	}
	ch, err := NewSerialChannel(SerialConfig{SocketPath: filepath.Join(t.TempDir(), "missing.sock")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = ch.Open(testCtx(t))
	if !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "missing.sock") {
		t.Errorf("open on a missing socket: err %v, want unavailable naming the socket", err)
	}
	ch.Close()
	if _, err := ch.Open(testCtx(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("open after close: err %v", err)
	}
}

func TestKeys(t *testing.T) {
	kp, err := NewKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(kp.PrivatePEM, []byte("-----BEGIN OPENSSH PRIVATE KEY-----")) {
		t.Errorf("private key is not in OpenSSH form: %.40q", kp.PrivatePEM)
	}
	s, err := ParseSigner(kp.PrivatePEM)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKey(kp.AuthorizedKey)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.PublicKey().Marshal(), pub.Marshal()) || pub.Type() != ssh.KeyAlgoED25519 {
		t.Errorf("round trip changed the key")
	}
	if _, err := ParseSigner([]byte("not a key")); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("bad private key: err %v", err)
	}
	if _, err := ParsePublicKey("ssh-ed25519 !!!"); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("bad public key: err %v", err)
	}
}

// fixedDialer hands out one stream.
type fixedDialer struct{ c net.Conn }

func (d fixedDialer) Open(context.Context) (net.Conn, error) { return d.c, nil }

func TestLoginShell(t *testing.T) {
	testutil.RequireCommand(t, "bash")
	// An empty home: the host's own ~/.profile is not part of the test.
	home := t.TempDir()
	h := newHarness(t, func(c *sshd.Config) { c.Home = home })
	c := h.client(t)
	out := newWatchWriter()
	code, err := c.Exec(testCtx(t), ExecRequest{
		Stdin:  strings.NewReader("echo \"shell=$0 term=$TERM pwd=$PWD\"; exit 3\n"),
		Stdout: out,
		PTY:    &PTY{Rows: 24, Cols: 80},
	})
	if err != nil || code != 3 {
		t.Fatalf("code %d err %v output %q", code, err, out.String())
	}
	if !strings.Contains(out.String(), "shell=-bash term=xterm-256color pwd="+home) {
		t.Errorf("output %q: not a login bash with the default TERM", out.String())
	}
}
