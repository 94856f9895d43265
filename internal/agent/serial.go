package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/api"
)

// Back-off between serial sessions: short, so a reconnecting host waits
// little, but never a tight loop (a port with no host connected returns
// EOF at once).
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = time.Second
)

// PortOpener opens the control port for one session. The real one opens
// the virtio-serial device; tests hand in one end of a socket pair.
type PortOpener func(ctx context.Context) (io.ReadWriteCloser, error)

// ConnServer serves one control connection (sshd.Server.ServeConn).
type ConnServer func(ctx context.Context, conn net.Conn) error

// SerialServer serves the control channel over a virtio-serial port: for
// each host connection it waits for proto.SerialHello, echoes it, and runs
// a yamux server whose streams each carry one SSH connection. When the host
// goes away it starts over.
type SerialServer struct {
	Open   PortOpener
	Serve  ConnServer
	Logger *slog.Logger
	// Sleep waits between sessions; nil uses a timer. Tests record it.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Run serves sessions until ctx ends, then waits for the connections it
// started and returns ctx's error.
func (s *SerialServer) Run(ctx context.Context) error {
	if s.Open == nil || s.Serve == nil {
		return fmt.Errorf("serial server: Open and Serve are required: %w", api.ErrBadRequest)
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sleep := s.Sleep
	if sleep == nil {
		sleep = sleepCtx
	}
	var conns sync.WaitGroup
	defer conns.Wait()
	backoff := minBackoff
	lastErr := ""
	for {
		helloSeen, err := s.session(ctx, log, &conns)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if helloSeen {
			backoff, lastErr = minBackoff, ""
			log.Info("control session ended", "err", err)
		} else if msg := fmt.Sprint(err); msg != lastErr {
			// Waiting for a host repeats the same error every second;
			// say it once.
			log.Info("waiting for host on the control port", "err", err)
			lastErr = msg
		}
		if err := sleep(ctx, backoff); err != nil {
			return err
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// session runs one host connection: open, hello, yamux. It reports whether
// the hello arrived.
func (s *SerialServer) session(ctx context.Context, log *slog.Logger, conns *sync.WaitGroup) (bool, error) {
	port, err := s.Open(ctx)
	if err != nil {
		return false, fmt.Errorf("open control port: %w", err)
	}
	var closeOnce sync.Once
	closePort := func() { closeOnce.Do(func() { port.Close() }) }
	defer closePort()
	// Reads on the port block until the host writes or goes away; ctx must
	// interrupt them.
	stop := context.AfterFunc(ctx, closePort)
	defer stop()

	announceReset(port)
	br := bufio.NewReader(port)
	if err := awaitHello(br); err != nil {
		return false, fmt.Errorf("wait for hello: %w", err)
	}
	if _, err := io.WriteString(port, proto.SerialHello); err != nil {
		return true, fmt.Errorf("echo hello: %w", err)
	}
	log.Info("control session started")
	cfg := yamuxConfig(log)
	// The reader keeps whatever bufio read past the hello.
	sess, err := yamux.Server(readWriteCloser{br, port, closePort}, cfg)
	if err != nil {
		return true, fmt.Errorf("start yamux: %w", err)
	}
	defer sess.Close()
	for {
		stream, err := sess.Accept()
		if err != nil {
			return true, err
		}
		conns.Go(func() {
			defer func() {
				// A bug in one connection must not take PID 1 (and with
				// it the whole VM) down.
				if r := recover(); r != nil {
					log.Error("panic serving a control connection", "panic", r)
				}
			}()
			if err := s.Serve(ctx, stream); err != nil {
				log.Warn("control connection", "err", err)
			}
		})
	}
}

// announceReset tells a host that may still hold a session with an
// earlier agent that this one starts afresh (see proto.SerialReset). With
// no host connected the write cannot complete, so it is bounded; a port
// without write deadlines is skipped rather than risk blocking.
func announceReset(port io.Writer) {
	d, ok := port.(interface{ SetWriteDeadline(time.Time) error })
	if !ok || d.SetWriteDeadline(time.Now().Add(200*time.Millisecond)) != nil {
		return
	}
	_, _ = io.WriteString(port, proto.SerialReset)
	_ = d.SetWriteDeadline(time.Time{})
}

// awaitHello reads until the hello, discarding everything before it: bytes
// of an earlier, dead session may still sit in the port.
func awaitHello(r io.ByteReader) error {
	hello := proto.SerialHello
	window := make([]byte, 0, len(hello))
	for {
		b, err := r.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("no host connected (EOF): %w", io.EOF)
			}
			return err
		}
		if len(window) == len(hello) {
			copy(window, window[1:])
			window = window[:len(hello)-1]
		}
		window = append(window, b)
		if string(window) == hello {
			return nil
		}
	}
}

func yamuxConfig(log *slog.Logger) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = nil
	cfg.Logger = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	// Notice a host that vanished without the port reporting it.
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = 15 * time.Second
	return cfg
}

type readWriteCloser struct {
	io.Reader
	w     io.Writer
	close func()
}

func (c readWriteCloser) Write(p []byte) (int, error) { return c.w.Write(p) }
func (c readWriteCloser) Close() error                { c.close(); return nil }

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// FindVirtioPort returns the device name (e.g. "vport1p1") of the
// virtio-serial port called name, looking in sysClass
// (/sys/class/virtio-ports).
func FindVirtioPort(sysClass, name string) (string, error) {
	entries, err := os.ReadDir(sysClass)
	if err != nil {
		return "", fmt.Errorf("list virtio ports: %w", err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(sysClass, e.Name(), "name"))
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == name {
			return e.Name(), nil
		}
	}
	return "", fmt.Errorf("no virtio port named %q in %s: %w", name, sysClass, os.ErrNotExist)
}

// VirtioPortOpener opens the virtio-serial port called name: found in
// sysClass, opened as devDir/<port>. The port can be open only once, so it
// is opened read-write through one descriptor.
func VirtioPortOpener(sysClass, devDir, name string) PortOpener {
	return func(ctx context.Context) (io.ReadWriteCloser, error) {
		port, err := FindVirtioPort(sysClass, name)
		if err != nil {
			return nil, err
		}
		dev := filepath.Join(devDir, port)
		// O_NONBLOCK makes the runtime poll it, so Close interrupts a read.
		fd, err := unix.Open(dev, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", dev, err)
		}
		return os.NewFile(uintptr(fd), dev), nil
	}
}
