package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/paths"
	"github.com/kilnvm/kiln/internal/store"
	"github.com/kilnvm/kiln/internal/vmm"
)

// syncBuffer is a log sink safe for the forwards' goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// freePort returns a 127.0.0.1 port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// portHeld reports whether 127.0.0.1:port cannot be listened on.
func portHeld(port int) bool {
	l, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return errors.Is(err, syscall.EADDRINUSE)
	}
	l.Close()
	return false
}

// TestRestoreForwards runs the start-up restore over recorded forwards of
// a running VM (one restorable, one whose host port another program took
// meanwhile) and of a stopped VM, then removal and release: restored ones
// listen again on their port and are listed, the others are dropped from
// the store with a warning, and removal forgets the record.
func TestRestoreForwards(t *testing.T) {
	ctx := context.Background()
	layout := paths.Layout{StateDir: t.TempDir(), RunDir: t.TempDir(), CacheDir: t.TempDir()}
	s, err := store.Open(ctx, layout.Database())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	logs := &syncBuffer{}
	d := &Daemon{layout: layout, store: s, logger: slog.New(slog.NewTextHandler(logs, nil))}
	d.initLocks(daemonLockOrder(true))
	t.Cleanup(d.fwd.closeAll)

	for _, v := range []store.VM{
		{ID: "run1", Name: "up", State: api.StateRunning, Image: "i", Kernel: "k", Driver: "qemu", VCPUs: 1, MemoryMiB: 256},
		{ID: "stop1", Name: "down", State: api.StateStopped, Image: "i", Kernel: "k", Driver: "qemu", VCPUs: 1, MemoryMiB: 256},
	} {
		if err := s.CreateVM(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(layout.VMDir("run1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := d.writeHandle("run1", vmm.Handle{Driver: "qemu", PID: 1, Channel: vmm.ChannelSerial, AgentSocket: "/nonexistent"}); err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free, takenPort, stoppedPort := freePort(t), taken.Addr().(*net.TCPAddr).Port, freePort(t)
	for _, f := range []store.Forward{
		{VMID: "run1", HostAddr: forwardHost, HostPort: free, GuestPort: 80},
		{VMID: "run1", HostAddr: forwardHost, HostPort: takenPort, GuestPort: 81},
		{VMID: "stop1", HostAddr: forwardHost, HostPort: stoppedPort, GuestPort: 82},
	} {
		if err := s.PutForward(ctx, f); err != nil {
			t.Fatal(err)
		}
	}

	d.restoreForwards(ctx)

	if got := d.fwd.list(""); len(got) != 1 || got[0].HostPort != free || got[0].GuestPort != 80 || got[0].VM != "up" {
		t.Fatalf("forwards after restore: %+v, want only %d -> 80 of vm up", got, free)
	}
	if !portHeld(free) {
		t.Fatalf("restored forward does not listen on %d", free)
	}
	if portHeld(stoppedPort) {
		t.Fatalf("the stopped VM's forward listens on %d", stoppedPort)
	}
	recs, err := s.ListForwards(ctx)
	if err != nil || len(recs) != 1 || recs[0].HostPort != free {
		t.Fatalf("records after restore: %v %+v, want only port %d", err, recs, free)
	}
	for _, want := range []string{"host port is in use by another program", "port=" + strconv.Itoa(takenPort), "vm is not running", "port forward restored"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}

	// Removing forgets the record and closes the port.
	if err := d.RemoveForward(ctx, "up", free); err != nil {
		t.Fatal(err)
	}
	if recs, _ := s.ListForwards(ctx); len(recs) != 0 || portHeld(free) || len(d.fwd.list("")) != 0 {
		t.Fatalf("after remove: records %+v, port held %v, listed %+v", recs, portHeld(free), d.fwd.list(""))
	}
	if err := d.RemoveForward(ctx, "up", free); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("removing again: %v", err)
	}

	// Releasing a VM's forwards (stop, kill, delete) forgets them too.
	if err := s.PutForward(ctx, store.Forward{VMID: "run1", HostAddr: forwardHost, HostPort: free, GuestPort: 80}); err != nil {
		t.Fatal(err)
	}
	d.restoreForwards(ctx)
	if len(d.fwd.list("run1")) != 1 {
		t.Fatalf("not restored again: %s", logs)
	}
	d.releaseForwards(ctx, "run1")
	if recs, _ := s.ListForwards(ctx); len(recs) != 0 || portHeld(free) || len(d.fwd.list("")) != 0 {
		t.Fatalf("after release: records %+v, port held %v", recs, portHeld(free))
	}
}
