package guest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/kilnvm/kiln/internal/api"
)

// HybridVsock dials a guest port through Firecracker's hybrid vsock: a
// Unix socket on the host on which each connection starts with
// "CONNECT <port>\n" and Firecracker answers "OK <host port>\n" once the
// guest accepted. It implements Dialer; every Open is a new connection.
type HybridVsock struct {
	SocketPath string
	Port       uint32
	// Timeout bounds the dial and handshake; default 10s.
	Timeout time.Duration
}

// Open implements Dialer.
func (h HybridVsock) Open(ctx context.Context) (net.Conn, error) {
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", h.SocketPath)
	if err != nil {
		return nil, fmt.Errorf("dial hybrid vsock %s: %w: %w", h.SocketPath, err, api.ErrUnavailable)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", h.Port); err != nil {
		c.Close()
		return nil, fmt.Errorf("hybrid vsock %s: send CONNECT: %w: %w", h.SocketPath, err, api.ErrUnavailable)
	}
	line, err := readHandshake(c)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("hybrid vsock %s port %d: %w: %w", h.SocketPath, h.Port, err, api.ErrUnavailable)
	}
	if !strings.HasPrefix(line, "OK ") {
		c.Close()
		return nil, fmt.Errorf("hybrid vsock %s port %d: unexpected answer %q: %w", h.SocketPath, h.Port, line, api.ErrUnavailable)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// readHandshake reads one line byte by byte (no buffering past it: the
// next byte belongs to the guest's stream).
func readHandshake(r io.Reader) (string, error) {
	br := bufio.NewReaderSize(oneByte{r}, 16)
	var line []byte
	for len(line) < 64 {
		b, err := br.ReadByte()
		if err != nil {
			if err == io.EOF {
				return "", fmt.Errorf("connection closed before the handshake answer (nothing listens on the guest port?)")
			}
			return "", err
		}
		if b == '\n' {
			return string(line), nil
		}
		line = append(line, b)
	}
	return "", fmt.Errorf("handshake answer too long")
}

// oneByte makes every Read return at most one byte, so a bufio.Reader on
// top never reads ahead.
type oneByte struct{ r io.Reader }

func (o oneByte) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}
