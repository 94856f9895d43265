package guest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/api"
)

// Timeouts of the client. A TCG guest is slow at the SSH handshake.
const (
	handshakeTimeout = 60 * time.Second
	// cancelGrace is how long a cancelled command gets after SIGTERM
	// before its channel is closed (which makes the agent kill it).
	cancelGrace = 2 * time.Second
)

// errHostKey marks a host key that is not the VM's.
var errHostKey = errors.New("ssh: host key mismatch")

// Client talks to one VM's agent over SSH. It keeps one SSH connection and
// re-dials when it breaks. It is safe for concurrent use.
type Client struct {
	dialer Dialer
	config *ssh.ClientConfig
	// dialing serialises dials, honouring ctx. Never held with mu.
	dialing chan struct{}

	mu sync.Mutex
	// guarded by mu
	sshConn *ssh.Client
	closed  bool
}

// NewClient returns a client that reaches the agent through d, accepts
// only hostKey as the agent's host key, and authenticates with signer.
func NewClient(d Dialer, hostKey ssh.PublicKey, signer ssh.Signer) *Client {
	return &Client{
		dialer: d,
		config: &ssh.ClientConfig{
			User: "root",
			Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
			HostKeyCallback: func(host string, remote net.Addr, key ssh.PublicKey) error {
				if err := ssh.FixedHostKey(hostKey)(host, remote, key); err != nil {
					return fmt.Errorf("%w: the agent presented %s, the VM's key is %s", errHostKey,
						ssh.FingerprintSHA256(key), ssh.FingerprintSHA256(hostKey))
				}
				return nil
			},
			ClientVersion: "SSH-2.0-kiln",
		},
		dialing: make(chan struct{}, 1),
	}
}

// ProxyConn opens a raw stream to the agent's SSH server, for a caller
// that runs its own SSH client over it (`kiln vm proxy`).
func (c *Client) ProxyConn(ctx context.Context) (net.Conn, error) {
	return c.dialer.Open(ctx)
}

// Close closes the SSH connection. The dialer is the caller's to close.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.sshConn != nil {
		c.sshConn.Close()
		c.sshConn = nil
	}
	return nil
}

// Conn returns the SSH connection, dialing it if there is none or the last
// one broke.
func (c *Client) Conn(ctx context.Context) (*ssh.Client, error) {
	cl, _, err := c.conn(ctx)
	return cl, err
}

// conn is Conn that also reports whether the connection is new; a reused
// one may have died unnoticed, which is worth one retry.
func (c *Client) conn(ctx context.Context) (cl *ssh.Client, fresh bool, err error) {
	if cl, err := c.current(); cl != nil || err != nil {
		return cl, false, err
	}
	select {
	case c.dialing <- struct{}{}:
	case <-ctx.Done():
		return nil, false, fmt.Errorf("connect to the guest agent: %w", ctxErr(ctx))
	}
	defer func() { <-c.dialing }()
	if cl, err := c.current(); cl != nil || err != nil {
		return cl, false, err
	}
	cl, err = c.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		cl.Close()
		return nil, false, ErrClosed
	}
	c.sshConn = cl
	go func() {
		// Forget the connection as soon as it breaks.
		_ = cl.Wait()
		c.forget(cl)
	}()
	return cl, true, nil
}

func (c *Client) current() (*ssh.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	return c.sshConn, nil
}

func (c *Client) forget(cl *ssh.Client) {
	cl.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sshConn == cl {
		c.sshConn = nil
	}
}

func (c *Client) dial(ctx context.Context) (*ssh.Client, error) {
	stream, err := c.dialer.Open(ctx)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(handshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = stream.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { stream.Close() })
	sconn, chans, reqs, err := ssh.NewClientConn(stream, "kiln-agent", c.config)
	if !stop() {
		if err == nil {
			sconn.Close()
		}
		return nil, fmt.Errorf("ssh handshake with the guest agent: %w", ctxErr(ctx))
	}
	if err != nil {
		stream.Close()
		// A wrong host key or a refused client key will not get better
		// by retrying: class it so that WaitReady stops.
		if errors.Is(err, errHostKey) || strings.Contains(err.Error(), "unable to authenticate") {
			return nil, fmt.Errorf("ssh handshake with the guest agent: %w: %w", err, api.ErrPermissionDenied)
		}
		return nil, fmt.Errorf("ssh handshake with the guest agent: %v: %w", err, api.ErrUnavailable)
	}
	_ = stream.SetDeadline(time.Time{})
	return ssh.NewClient(sconn, chans, reqs), nil
}

// request sends a global request and waits for the reply. If ctx ends
// first the connection is closed: a request that hangs means it is broken.
func (c *Client) request(ctx context.Context, name string, payload []byte) ([]byte, error) {
	for {
		cl, fresh, err := c.conn(ctx)
		if err != nil {
			return nil, err
		}
		type result struct {
			ok  bool
			b   []byte
			err error
		}
		ch := make(chan result, 1)
		go func() {
			ok, b, err := cl.SendRequest(name, true, payload)
			ch <- result{ok, b, err}
		}()
		var r result
		select {
		case r = <-ch:
		case <-ctx.Done():
			c.forget(cl)
			return nil, fmt.Errorf("%s: %w", name, ctxErr(ctx))
		}
		if r.err != nil {
			c.forget(cl)
			if !fresh {
				continue // a connection that died while idle: redial once
			}
			return nil, fmt.Errorf("%s: connection to the guest agent lost: %v: %w", name, r.err, api.ErrUnavailable)
		}
		if !r.ok {
			msg := string(r.b)
			if msg == "" {
				msg = "refused"
			}
			return nil, fmt.Errorf("%s: the guest agent answered: %s", name, msg)
		}
		return r.b, nil
	}
}

// newSession opens a session channel, redialing once when a reused
// connection turns out dead. If ctx ends first the connection is closed.
func (c *Client) newSession(ctx context.Context) (*ssh.Session, *ssh.Client, error) {
	for {
		cl, fresh, err := c.conn(ctx)
		if err != nil {
			return nil, nil, err
		}
		type result struct {
			s   *ssh.Session
			err error
		}
		ch := make(chan result, 1)
		go func() {
			s, err := cl.NewSession()
			ch <- result{s, err}
		}()
		var r result
		select {
		case r = <-ch:
		case <-ctx.Done():
			c.forget(cl)
			return nil, nil, fmt.Errorf("open a session with the guest agent: %w", ctxErr(ctx))
		}
		if r.err == nil {
			return r.s, cl, nil
		}
		var oce *ssh.OpenChannelError
		if errors.As(r.err, &oce) {
			// The agent answered: the connection is fine, the request not.
			return nil, nil, fmt.Errorf("open a session with the guest agent: %w", r.err)
		}
		c.forget(cl)
		if !fresh {
			continue
		}
		return nil, nil, fmt.Errorf("open a session with the guest agent: %v: %w", r.err, api.ErrUnavailable)
	}
}

// Health asks the agent how it is.
func (c *Client) Health(ctx context.Context) (proto.Health, error) {
	b, err := c.request(ctx, proto.RequestHealth, nil)
	if err != nil {
		return proto.Health{}, err
	}
	var h proto.Health
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("decode health reply: %w", err)
	}
	return h, nil
}

// Poweroff asks the agent to sync and power the guest off. It returns once
// the agent has accepted; the VM goes down shortly after.
func (c *Client) Poweroff(ctx context.Context) error {
	_, err := c.request(ctx, proto.RequestPoweroff, nil)
	return err
}

// WaitReady retries Health until the agent answers or ctx ends; the error
// then says what failed last. A wrong host key or a refused client key
// ends it at once (class permission_denied).
func (c *Client) WaitReady(ctx context.Context) error {
	start := time.Now()
	backoff := 100 * time.Millisecond
	for {
		_, err := c.Health(ctx)
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrClosed) || errors.Is(err, api.ErrPermissionDenied) {
			return err // retrying cannot help
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			class := api.ErrUnavailable
			if errors.Is(ctx.Err(), context.Canceled) {
				class = api.ErrCanceled
			}
			return fmt.Errorf("guest agent not ready after %s: last error: %v: %w", time.Since(start).Round(time.Millisecond), err, class)
		case <-t.C:
		}
		backoff = min(backoff*2, time.Second)
	}
}

// PTY asks for a pseudo-terminal.
type PTY struct {
	Term       string // TERM; "xterm-256color" when empty
	Rows, Cols int
}

// WinSize is a terminal size change.
type WinSize struct {
	Rows, Cols int
}

// ExecRequest is one command to run in the guest.
type ExecRequest struct {
	// Command is run with /bin/sh -c; empty runs a login shell.
	Command string
	// Env entries (NAME=VALUE) are added to the command's environment.
	Env []string
	// Stdin is copied until EOF; nil is empty. A reader that never
	// returns keeps a goroutine of Exec's alive until it does.
	Stdin  io.Reader
	Stdout io.Writer // nil: discarded
	// Stderr is unused with a PTY (the terminal merges it into Stdout).
	Stderr io.Writer
	PTY    *PTY
	// Resize delivers window size changes while the command runs.
	Resize <-chan WinSize
}

// Exec runs a command and returns its exit code: the exit status, or
// 128+N when signal N killed it. When ctx ends the command gets SIGTERM
// and, after a grace period, its channel is closed (the agent then kills
// it); Exec returns ctx's error. A lost connection is an error of class
// unavailable.
func (c *Client) Exec(ctx context.Context, req ExecRequest) (int, error) {
	sess, cl, err := c.newSession(ctx)
	if err != nil {
		return -1, err
	}
	defer sess.Close()
	for _, kv := range req.Env {
		name, value, ok := splitEnv(kv)
		if !ok {
			return -1, fmt.Errorf("env entry %q: want NAME=VALUE: %w", kv, api.ErrBadRequest)
		}
		if err := sess.Setenv(name, value); err != nil {
			return -1, fmt.Errorf("set %s in the guest: %w", name, err)
		}
	}
	if req.PTY != nil {
		term := req.PTY.Term
		if term == "" {
			term = "xterm-256color"
		}
		modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
		if err := sess.RequestPty(term, req.PTY.Rows, req.PTY.Cols, modes); err != nil {
			return -1, fmt.Errorf("request a terminal in the guest: %w", err)
		}
	}
	sess.Stdin = req.Stdin
	sess.Stdout = req.Stdout
	sess.Stderr = req.Stderr
	if req.Command == "" {
		err = sess.Shell()
	} else {
		err = sess.Start(req.Command)
	}
	if err != nil {
		return -1, fmt.Errorf("start command in the guest: %w", err)
	}

	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	if req.Resize != nil {
		stopResize := make(chan struct{})
		defer close(stopResize)
		go func() {
			for {
				select {
				case ws, ok := <-req.Resize:
					if !ok {
						return
					}
					_ = sess.WindowChange(ws.Rows, ws.Cols)
				case <-stopResize:
					return
				}
			}
		}()
	}

	select {
	case err := <-done:
		return exitCode(err)
	case <-ctx.Done():
	}
	_ = sess.Signal(ssh.SIGTERM)
	t := time.NewTimer(cancelGrace)
	defer t.Stop()
	select {
	case err := <-done:
		code, _ := exitCode(err)
		return code, fmt.Errorf("command cancelled: %w", ctxErr(ctx))
	case <-t.C:
	}
	sess.Close()
	t.Reset(cancelGrace)
	select {
	case <-done:
	case <-t.C:
		// Not even the close was answered: the connection is dead.
		c.forget(cl)
		<-done
	}
	return -1, fmt.Errorf("command cancelled: %w", ctxErr(ctx))
}

func exitCode(err error) (int, error) {
	if err == nil {
		return 0, nil
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		if ee.Signal() != "" {
			if n := unix.SignalNum("SIG" + ee.Signal()); n != 0 {
				return 128 + int(n), nil
			}
		}
		return ee.ExitStatus(), nil
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) {
		return -1, fmt.Errorf("the command's connection to the guest was lost before it exited: %w", api.ErrUnavailable)
	}
	return -1, fmt.Errorf("command I/O: %w", err)
}

func splitEnv(kv string) (name, value string, ok bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], i > 0
		}
	}
	return "", "", false
}

// ctxErr classes a context's error for the API.
func ctxErr(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", ctx.Err(), api.ErrUnavailable)
	}
	return fmt.Errorf("%w: %w", ctx.Err(), api.ErrCanceled)
}
