package daemon

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/guest"
	"github.com/kilnvm/kiln/internal/lockorder"
	"github.com/kilnvm/kiln/internal/paths"
	"github.com/kilnvm/kiln/internal/vmm"
)

// guestPool keeps one agent channel per running VM. A serial channel
// admits a single host connection, so every exec, shell and health check
// of a VM shares it (as yamux streams).
type guestPool struct {
	mu lockorder.Mutex // guards conns; a leaf: never held across guest I/O
	m  map[string]*guestConn
}

type guestConn struct {
	handle  vmm.Handle
	channel guestChannel
	*guest.Client
}

func (p *guestPool) get(id string, h vmm.Handle, dir string, logger *slog.Logger) (*guestConn, error) {
	p.mu.Lock()
	if gc, ok := p.m[id]; ok && gc.handle.PID == h.PID && gc.handle.StartTicks == h.StartTicks {
		p.mu.Unlock()
		return gc, nil
	}
	p.mu.Unlock()
	if h.Channel != vmm.ChannelSerial && h.Channel != vmm.ChannelHybridVsock {
		return nil, fmt.Errorf("agent channel %q: %w", h.Channel, api.ErrNotImplemented)
	}
	hostPEM, err := os.ReadFile(filepath.Join(dir, paths.VMHostKey))
	if err != nil {
		return nil, fmt.Errorf("read host key: %w", err)
	}
	hostSigner, err := ssh.ParsePrivateKey(hostPEM)
	if err != nil {
		return nil, fmt.Errorf("parse host key: %w", err)
	}
	clientPEM, err := os.ReadFile(filepath.Join(dir, paths.VMClientKey))
	if err != nil {
		return nil, fmt.Errorf("read client key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(clientPEM)
	if err != nil {
		return nil, fmt.Errorf("parse client key: %w", err)
	}
	var ch guestChannel = hybridVsockChannel{guest.HybridVsock{SocketPath: h.AgentSocket, Port: proto.VsockPort}}
	if h.Channel == vmm.ChannelSerial {
		if ch, err = guest.NewSerialChannel(guest.SerialConfig{SocketPath: h.AgentSocket, Logger: logger}); err != nil {
			return nil, err
		}
	}
	gc := &guestConn{handle: h, channel: ch, Client: guest.NewClient(ch, hostSigner.PublicKey(), signer)}
	p.mu.Lock()
	defer p.mu.Unlock()
	if old, ok := p.m[id]; ok {
		if old.handle.PID == h.PID && old.handle.StartTicks == h.StartTicks {
			gc.Close()
			return old, nil // another caller won the race
		}
		old.Close()
	}
	if p.m == nil {
		p.m = map[string]*guestConn{}
	}
	p.m[id] = gc
	return gc, nil
}

// guestChannel is an agent channel: serial (one multiplexed connection)
// or hybrid vsock (a connection per stream, nothing to close).
type guestChannel interface {
	guest.Dialer
	Close() error
}

type hybridVsockChannel struct{ guest.HybridVsock }

func (hybridVsockChannel) Close() error { return nil }

func (gc *guestConn) Close() {
	gc.Client.Close()
	gc.channel.Close()
}

func (p *guestPool) drop(id string) {
	p.mu.Lock()
	gc, ok := p.m[id]
	delete(p.m, id)
	p.mu.Unlock()
	if ok {
		gc.Close()
	}
}

func (p *guestPool) closeAll() {
	p.mu.Lock()
	m := p.m
	p.m = nil
	p.mu.Unlock()
	for _, gc := range m {
		gc.Close()
	}
}

// splice copies both ways between a hijacked client connection (with its
// buffered reader) and a guest stream, half-closing each direction.
func splice(conn net.Conn, br io.Reader, stream net.Conn) {
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(stream, br)
		closeWrite(stream)
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(conn, stream)
		closeWrite(conn)
		done <- struct{}{}
	}()
	<-done
	<-done
	conn.Close()
	stream.Close()
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// tailFile returns the last n lines of a file, for error messages.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
