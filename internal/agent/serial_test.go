package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/agent/proto"
)

// eofPort is a port with no host connected: reads return EOF at once.
type eofPort struct{}

func (eofPort) Read([]byte) (int, error)    { return 0, io.EOF }
func (eofPort) Write(p []byte) (int, error) { return len(p), nil }
func (eofPort) Close() error                { return nil }

func TestSerialServerBacksOffWhileNoHost(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var opens int
	var sleeps []time.Duration
	s := &SerialServer{
		Open: func(context.Context) (io.ReadWriteCloser, error) {
			mu.Lock()
			defer mu.Unlock()
			opens++
			return eofPort{}, nil
		},
		Serve: func(context.Context, net.Conn) error { t.Error("served without a host"); return nil },
		Sleep: func(_ context.Context, d time.Duration) error {
			mu.Lock()
			defer mu.Unlock()
			sleeps = append(sleeps, d)
			if len(sleeps) == 7 {
				cancel()
				return context.Canceled
			}
			return nil
		},
	}
	if err := s.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("run: %v", err)
	}
	ms := time.Millisecond
	want := []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, time.Second, time.Second, time.Second}
	if len(sleeps) != len(want) {
		t.Fatalf("sleeps %v, want %v", sleeps, want)
	}
	for i := range want {
		if sleeps[i] != want[i] {
			t.Errorf("sleeps %v, want %v", sleeps, want)
			break
		}
	}
	// Every EOF is followed by a back-off: no tight loop.
	if opens != len(sleeps) {
		t.Errorf("%d opens for %d back-offs", opens, len(sleeps))
	}
}

func TestSerialServerFailedOpenBacksOff(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var sleeps int
	s := &SerialServer{
		Open: func(context.Context) (io.ReadWriteCloser, error) {
			return nil, errors.New("no such port yet")
		},
		Serve: func(context.Context, net.Conn) error { return nil },
		Sleep: func(context.Context, time.Duration) error {
			sleeps++
			if sleeps == 3 {
				cancel()
				return context.Canceled
			}
			return nil
		},
	}
	if err := s.Run(ctx); !errors.Is(err, context.Canceled) || sleeps != 3 {
		t.Errorf("run: %v after %d sleeps", err, sleeps)
	}
}

func TestSerialServerNeedsOpenAndServe(t *testing.T) {
	if err := (&SerialServer{}).Run(context.Background()); err == nil {
		t.Error("no error without Open and Serve")
	}
}

func TestSerialServerAnnouncesResetAndEchoesHello(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	guest := os.NewFile(uintptr(fds[0]), "guest")
	host := os.NewFile(uintptr(fds[1]), "host")
	defer host.Close()
	opened := make(chan struct{})
	s := &SerialServer{
		Open: func(ctx context.Context) (io.ReadWriteCloser, error) {
			select {
			case <-opened:
				<-ctx.Done() // one session only
				return nil, ctx.Err()
			default:
				close(opened)
				return guest, nil
			}
		},
		Serve: func(context.Context, net.Conn) error { return nil },
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	// Stale bytes first, then the hello.
	if _, err := host.Write([]byte("old yamux \x00\x00 frame\nKILN-HELLO-\n" + proto.SerialHello)); err != nil {
		t.Fatal(err)
	}
	host.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(host)
	var got []string
	for range 2 {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read from agent: %v (got %q)", err, got)
		}
		got = append(got, line)
	}
	if got[0] != proto.SerialReset || got[1] != proto.SerialHello {
		t.Errorf("agent wrote %q, want reset then hello", got)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop on cancel")
	}
}

func TestAwaitHello(t *testing.T) {
	for _, tc := range []struct {
		in   string
		ok   bool
		rest string
	}{
		{proto.SerialHello + "after", true, "after"},
		{"junk\x00\xffKILN-HELLO-1KILN-" + proto.SerialHello + "x", true, "x"},
		{"KILN-HELLO-", false, ""},
		{"", false, ""},
	} {
		br := bufio.NewReader(strings.NewReader(tc.in))
		err := awaitHello(br)
		if (err == nil) != tc.ok {
			t.Errorf("%q: err %v", tc.in, err)
			continue
		}
		if !tc.ok {
			if !errors.Is(err, io.EOF) {
				t.Errorf("%q: err %v, want EOF", tc.in, err)
			}
			continue
		}
		rest, _ := io.ReadAll(br)
		if string(rest) != tc.rest {
			t.Errorf("%q: rest %q, want %q (bytes after the hello belong to yamux)", tc.in, rest, tc.rest)
		}
	}
}

func TestFindVirtioPort(t *testing.T) {
	sys := t.TempDir()
	for port, name := range map[string]string{"vport0p0": "", "vport0p1": "org.qemu.guest_agent.0\n", "vport1p1": proto.SerialPortName + "\n"} {
		os.MkdirAll(filepath.Join(sys, port), 0o755)
		os.WriteFile(filepath.Join(sys, port, "name"), []byte(name), 0o444)
	}
	got, err := FindVirtioPort(sys, proto.SerialPortName)
	if err != nil || got != "vport1p1" {
		t.Errorf("got %q %v", got, err)
	}
	if _, err := FindVirtioPort(sys, "other"); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), `"other"`) {
		t.Errorf("missing port: %v", err)
	}
	if _, err := FindVirtioPort(filepath.Join(sys, "nope"), "x"); err == nil {
		t.Error("missing sysfs dir: no error")
	}

	// The opener opens /dev/<port> read-write.
	dev := t.TempDir()
	os.WriteFile(filepath.Join(dev, "vport1p1"), nil, 0o600)
	f, err := VirtioPortOpener(sys, dev, proto.SerialPortName)(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("x")); err != nil {
		t.Errorf("port not writable: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dev, "vport1p1")); !bytes.Equal(b, []byte("x")) {
		t.Errorf("wrote to the wrong file: %q", b)
	}
}
