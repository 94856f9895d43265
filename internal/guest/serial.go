package guest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/api"
)

// Dialer opens a new stream to the guest agent's SSH server. Each stream
// carries one SSH connection. SerialChannel implements it; so will the
// vsock dialers.
type Dialer interface {
	Open(ctx context.Context) (net.Conn, error)
}

// ErrClosed is returned by Open after Close.
var ErrClosed = errors.New("guest channel closed")

// SerialConfig configures a SerialChannel. SocketPath or Dial is required.
type SerialConfig struct {
	// SocketPath is the host end of the VM's virtio-serial port: QEMU's
	// `-chardev socket,server=on` Unix socket.
	SocketPath string
	// Dial overrides how the socket is reached (tests use socket pairs).
	Dial func(ctx context.Context) (net.Conn, error)
	// HelloTimeout bounds the wait for the agent's echo of the hello,
	// counted again from each reset marker the agent writes when it opens
	// its port; default 10s (a guest under TCG may be slow, and the agent
	// retries a port without host only once a second).
	HelloTimeout time.Duration
	// KeepAliveInterval is how often yamux pings the agent, so a dead
	// guest is noticed; default 10s.
	KeepAliveInterval time.Duration
	// PingTimeout bounds the check of an idle session that Open makes
	// before reusing it; default 5s.
	PingTimeout time.Duration
	Logger      *slog.Logger
}

// SerialChannel owns the single connection to one VM's agent socket (QEMU
// accepts one client at a time) and multiplexes streams over it with
// yamux. Open reconnects transparently when the session has died. It is
// safe for concurrent use.
type SerialChannel struct {
	cfg SerialConfig
	log *slog.Logger
	// connecting serialises connects (a buffered channel rather than a
	// mutex, so waiting honours ctx). Never held together with mu.
	connecting chan struct{}

	mu sync.Mutex
	// guarded by mu
	sess   *yamux.Session
	closed bool
}

// NewSerialChannel returns a channel; it connects on the first Open.
func NewSerialChannel(cfg SerialConfig) (*SerialChannel, error) {
	if cfg.Dial == nil {
		if cfg.SocketPath == "" {
			return nil, fmt.Errorf("serial channel: no socket path: %w", api.ErrBadRequest)
		}
		path := cfg.SocketPath
		cfg.Dial = func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
	}
	if cfg.HelloTimeout <= 0 {
		cfg.HelloTimeout = 10 * time.Second
	}
	if cfg.PingTimeout <= 0 {
		cfg.PingTimeout = 5 * time.Second
	}
	if cfg.KeepAliveInterval <= 0 {
		cfg.KeepAliveInterval = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &SerialChannel{cfg: cfg, log: log, connecting: make(chan struct{}, 1)}, nil
}

// Open opens a new stream to the agent's SSH server, connecting (or
// reconnecting, if the session died) first.
func (c *SerialChannel) Open(ctx context.Context) (net.Conn, error) {
	for attempt := 0; ; attempt++ {
		sess, fresh, err := c.session(ctx)
		if err != nil {
			return nil, err
		}
		if !fresh {
			// A session can look alive while the agent has dropped it
			// (restarted, or reset after a protocol error); a ping tells.
			if err := ping(ctx, sess, c.cfg.PingTimeout); err != nil {
				if ctx.Err() != nil {
					return nil, fmt.Errorf("ping the guest agent: %w", ctx.Err())
				}
				c.log.Info("guest agent session is dead, reconnecting", "err", err)
				c.drop(sess)
				continue
			}
		}
		stream, err := openStream(ctx, sess)
		if err == nil {
			return stream, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("open a stream to the guest agent: %w", ctx.Err())
		}
		c.drop(sess)
		if fresh || attempt > 0 {
			return nil, fmt.Errorf("open a stream to the guest agent: %v: %w", err, api.ErrUnavailable)
		}
	}
}

// Close closes the connection; streams opened from it break.
func (c *SerialChannel) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.sess != nil {
		c.sess.Close()
		c.sess = nil
	}
	return nil
}

// session returns the live session, connecting when there is none; fresh
// reports a new connection.
func (c *SerialChannel) session(ctx context.Context) (s *yamux.Session, fresh bool, err error) {
	if s, err := c.current(); s != nil || err != nil {
		return s, false, err
	}
	select {
	case c.connecting <- struct{}{}:
	case <-ctx.Done():
		return nil, false, fmt.Errorf("connect to the guest agent: %w", ctx.Err())
	}
	defer func() { <-c.connecting }()
	// Someone else may have connected while we waited.
	if s, err := c.current(); s != nil || err != nil {
		return s, false, err
	}
	s, err = c.connect(ctx)
	if err != nil {
		return nil, false, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		s.Close()
		return nil, false, ErrClosed
	}
	c.sess = s
	return s, true, nil
}

func (c *SerialChannel) current() (*yamux.Session, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if c.sess != nil && !c.sess.IsClosed() {
		return c.sess, nil
	}
	c.sess = nil
	return nil, nil
}

func (c *SerialChannel) drop(s *yamux.Session) {
	s.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == s {
		c.sess = nil
	}
}

// connect dials the socket, exchanges the hello and starts yamux.
func (c *SerialChannel) connect(ctx context.Context) (*yamux.Session, error) {
	conn, err := c.cfg.Dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to the guest agent socket %s: %v: %w", c.cfg.SocketPath, err, api.ErrUnavailable)
	}
	setDeadline := func() {
		deadline := time.Now().Add(c.cfg.HelloTimeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		_ = conn.SetDeadline(deadline)
	}
	setDeadline()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	br := bufio.NewReader(conn)
	_, err = io.WriteString(conn, proto.SerialHello)
	if err == nil {
		// Bytes of an earlier session may come first; skip them. An agent
		// that announces itself (booting just now) gets a fresh timeout
		// to answer, rather than losing the race to a reconnect.
		err = awaitHello(br, setDeadline)
	}
	if !stop() {
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		c.log.Debug("hello to the guest agent failed", "socket", c.cfg.SocketPath, "err", err)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("hello to the guest agent: %w", ctx.Err())
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("no hello from the guest agent within %s (is the VM up and its agent running?): %w", c.cfg.HelloTimeout, api.ErrUnavailable)
		}
		return nil, fmt.Errorf("hello to the guest agent: %v: %w", err, api.ErrUnavailable)
	}
	_ = conn.SetDeadline(time.Time{})
	ycfg := yamux.DefaultConfig()
	ycfg.LogOutput = nil
	ycfg.Logger = slog.NewLogLogger(c.log.Handler(), slog.LevelDebug)
	ycfg.EnableKeepAlive = true
	ycfg.KeepAliveInterval = c.cfg.KeepAliveInterval
	// The reader keeps whatever bufio read past the hello.
	sess, err := yamux.Client(readWriteCloser{br, conn}, ycfg)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("start yamux: %w", err)
	}
	c.log.Debug("connected to the guest agent", "socket", c.cfg.SocketPath)
	return sess, nil
}

// awaitHello reads until the hello line, discarding what comes before.
// onReset is called each time the agent's reset marker goes by: a fresh
// agent has just opened its port and is about to read our hello.
func awaitHello(r io.ByteReader, onReset func()) error {
	hello, reset := proto.SerialHello, proto.SerialReset
	n := max(len(hello), len(reset))
	window := make([]byte, 0, n)
	for {
		b, err := r.ReadByte()
		if err != nil {
			return err
		}
		if len(window) == n {
			copy(window, window[1:])
			window = window[:n-1]
		}
		window = append(window, b)
		switch {
		case strings.HasSuffix(string(window), hello):
			return nil
		case strings.HasSuffix(string(window), reset):
			onReset()
		}
	}
}

func openStream(ctx context.Context, s *yamux.Session) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := s.Open()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

func ping(ctx context.Context, s *yamux.Session, timeout time.Duration) error {
	ch := make(chan error, 1)
	go func() {
		_, err := s.Ping()
		ch <- err
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-ch:
		return err
	case <-t.C:
		return fmt.Errorf("no answer to a ping within %s", timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

type readWriteCloser struct {
	*bufio.Reader
	conn net.Conn
}

func (c readWriteCloser) Write(p []byte) (int, error) { return c.conn.Write(p) }
func (c readWriteCloser) Close() error                { return c.conn.Close() }
