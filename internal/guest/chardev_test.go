package guest

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// fakeChardev stands in for QEMU's virtio-serial port behind a
// `-chardev socket,server=on` (measured behaviour, see DESIGN.md §5):
//   - one host connection at a time; it outlives the guest opening and
//     closing its port;
//   - while the guest port is closed the host's bytes wait (nothing is
//     lost); while no host is connected the guest reads EOF at once;
//   - when the host disconnects, the guest's reads return EOF.
//
// The guest side is the agent's PortOpener; each open is a new socket
// pair whose far end the fake pumps to and from the host connection.
type fakeChardev struct {
	// hostGarbage is written to each new host connection first: bytes
	// from a dead session still buffered in the port.
	hostGarbage []byte

	mu sync.Mutex
	// guarded by mu
	host    *os.File      // relay end of the current host connection
	chunks  chan []byte   // bytes read from the current host connection
	hostGen chan struct{} // closed when the current host goes away
	pending []byte        // host bytes not yet delivered to the guest
	port    *os.File      // relay end of the open guest port
	conns   []net.Conn    // every host end handed out
	closed  bool
}

func newFakeChardev() *fakeChardev { return &fakeChardev{} }

// Dial connects a new host, like connecting to QEMU's socket.
func (f *fakeChardev) Dial(ctx context.Context) (net.Conn, error) {
	hostEnd, relay, err := socketPair()
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	// QEMU accepts the next client only once the current one is gone; the
	// connect itself succeeds (the listen backlog) and the client waits.
	for f.host != nil && !f.closed {
		gone := f.hostGen
		f.mu.Unlock()
		select {
		case <-gone:
		case <-ctx.Done():
			hostEnd.Close()
			relay.Close()
			return nil, ctx.Err()
		}
		f.mu.Lock()
	}
	if f.closed {
		f.mu.Unlock()
		hostEnd.Close()
		relay.Close()
		return nil, errors.New("chardev closed")
	}
	f.host = relay
	f.chunks = make(chan []byte, 64)
	f.hostGen = make(chan struct{})
	f.conns = append(f.conns, hostEnd)
	chunks, gone := f.chunks, f.hostGen
	f.mu.Unlock()

	if len(f.hostGarbage) > 0 {
		if _, err := relay.Write(f.hostGarbage); err != nil {
			return nil, err
		}
	}
	go f.readHost(relay, chunks, gone)
	return hostEnd, nil
}

// readHost reads the host connection until it closes; then the guest's
// port reads EOF.
func (f *fakeChardev) readHost(relay *os.File, chunks chan<- []byte, gone chan struct{}) {
	buf := make([]byte, 32<<10)
	for {
		n, err := relay.Read(buf)
		if n > 0 {
			chunks <- append([]byte(nil), buf[:n]...)
		}
		if err != nil {
			break
		}
	}
	f.mu.Lock()
	if f.host == relay {
		f.host = nil
		f.pending = nil
		if f.port != nil {
			f.port.Close()
			f.port = nil
		}
	}
	f.mu.Unlock()
	relay.Close()
	close(gone)
}

// Open is the agent's PortOpener.
func (f *fakeChardev) Open(ctx context.Context) (io.ReadWriteCloser, error) {
	guest, relay, err := socketPair()
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.host == nil {
		relay.Close() // no host: the guest reads EOF at once
		return guest, nil
	}
	if f.port != nil {
		f.port.Close() // the real port cannot be open twice; be lenient
	}
	f.port = relay
	go f.toGuest(relay, f.chunks, f.hostGen)
	go f.fromGuest(relay, f.host)
	return guest, nil
}

// toGuest delivers host bytes to an open guest port; what the port could
// not take waits for the next open.
func (f *fakeChardev) toGuest(port *os.File, chunks <-chan []byte, gone <-chan struct{}) {
	for {
		f.mu.Lock()
		if f.port != port {
			f.mu.Unlock()
			return
		}
		data := f.pending
		f.pending = nil
		f.mu.Unlock()
		if data == nil {
			select {
			case data = <-chunks:
			case <-gone:
				return
			}
		}
		if _, err := port.Write(data); err != nil {
			f.mu.Lock()
			f.pending = append(data, f.pending...)
			f.mu.Unlock()
			return
		}
	}
}

// fromGuest copies the guest's writes to the host until the guest closes
// its port.
func (f *fakeChardev) fromGuest(port, host *os.File) {
	buf := make([]byte, 32<<10)
	for {
		n, err := port.Read(buf)
		if n > 0 {
			if _, werr := host.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	f.mu.Lock()
	if f.port == port {
		f.port = nil
	}
	f.mu.Unlock()
	// Unblock toGuest if it waits on this port.
	port.Close()
}

// dropHost cuts the current host connection, like a daemon crash.
func (f *fakeChardev) dropHost() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := len(f.conns); n > 0 {
		f.conns[n-1].Close()
	}
}

func (f *fakeChardev) dials() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

func (f *fakeChardev) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for _, c := range f.conns {
		c.Close()
	}
	if f.host != nil {
		f.host.Close()
	}
	if f.port != nil {
		f.port.Close()
	}
}

// socketPair returns a connected pair: a net.Conn and a pollable *os.File.
func socketPair() (net.Conn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	a := os.NewFile(uintptr(fds[0]), "socketpair-a")
	b := os.NewFile(uintptr(fds[1]), "socketpair-b")
	conn, err := net.FileConn(a)
	a.Close()
	if err != nil {
		b.Close()
		return nil, nil, err
	}
	return conn, b, nil
}
