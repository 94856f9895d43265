package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/store"
	"github.com/kilnvm/kiln/internal/testutil"
)

// restartDaemon ends the shared daemon with sig, runs between (if any)
// while it is down, starts it again, and returns the log it wrote since.
func restartDaemon(t *testing.T, h *harness, sig syscall.Signal, between func()) string {
	t.Helper()
	logPath := filepath.Join(h.root, "daemon.log")
	h.killDaemon(t, sig)
	st, err := os.Stat(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if between != nil {
		between()
	}
	if err := h.startDaemon(nil); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(logPath)
	if err != nil || int64(len(b)) < st.Size() {
		t.Fatalf("read the daemon log: %v", err)
	}
	return string(b[st.Size():])
}

// listForwards runs `kiln vm forwards --json` for one VM.
func listForwards(t *testing.T, h *harness, name string) []api.Forward {
	t.Helper()
	var fs []api.Forward
	r := h.mustKiln(t, "vm", "forwards", name, "--json")
	if err := json.Unmarshal([]byte(r.stdout), &fs); err != nil {
		t.Fatalf("vm forwards --json: %v\n%s", err, r.stdout)
	}
	return fs
}

// echoes checks that a 64 KiB round trip through a forward comes back whole.
func echoes(t *testing.T, f api.Forward, when string) {
	t.Helper()
	data := bytes.Repeat([]byte("kiln-forward-restart\n"), 3200)
	got, err := roundTrip(net.JoinHostPort(f.HostAddr, strconv.Itoa(f.HostPort)), data)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("%s: echo through %s:%d: %v; sent %d bytes, got %d back", when, f.HostAddr, f.HostPort, err, len(data), len(got))
	}
}

// Forwards survive a SIGKILLed and a SIGTERMed daemon while their VM runs,
// on the same host port; one whose host port another program took while
// the daemon was down is dropped with a warning and the daemon starts;
// stopping the VM forgets its forwards for good.
func TestForwardRestart(t *testing.T) {
	h := setup(t)
	vm := h.createVM(t, "fwr")
	// Runs before the VM's delete (cleanups are LIFO): a failure while
	// the daemon is down must not leave the later tests without one.
	t.Cleanup(func() {
		h.mu.Lock()
		down := h.daemon == nil
		h.mu.Unlock()
		if down {
			if err := h.startDaemon(nil); err != nil {
				t.Errorf("restart the daemon: %v", err)
			}
		}
	})
	h.mustKiln(t, "vm", "exec", "fwr", "--", "sh", "-c", "(nc -ll -p 9000 -e cat </dev/null >/dev/null 2>&1 &)")
	testutil.WaitFor(t, 30*time.Second, "nc listening in the guest", func() bool {
		for _, p := range vmPorts(t, h, "fwr").Ports {
			if p.Port == 9000 {
				return true
			}
		}
		return false
	})
	a := addForward(t, h, "fwr", "0:9000")
	b := addForward(t, h, "fwr", "0:9000")
	echoes(t, a, "before restart")

	// SIGKILL: both come back on their ports, listed, and carry data.
	log := restartDaemon(t, h, syscall.SIGKILL, nil)
	if v, err := h.client().GetVM(context.Background(), "fwr"); err != nil || v.State != api.StateRunning {
		t.Fatalf("vm after restart: %+v %v", v, err)
	}
	if fs := listForwards(t, h, "fwr"); len(fs) != 2 || fs[0] != minPort(a, b) || fs[1] != maxPort(a, b) {
		t.Fatalf("forwards after a SIGKILLed daemon: %+v, want %+v and %+v\n%s", fs, a, b, log)
	}
	echoes(t, a, "after SIGKILL")
	echoes(t, b, "after SIGKILL")

	// SIGTERM, and another program takes b's port meanwhile: b is dropped
	// with a warning, a still works, the daemon serves.
	var taken net.Listener
	log = restartDaemon(t, h, syscall.SIGTERM, func() {
		var err error
		taken, err = net.Listen("tcp4", net.JoinHostPort(b.HostAddr, strconv.Itoa(b.HostPort)))
		if err != nil {
			t.Fatalf("take port %d while the daemon is down: %v", b.HostPort, err)
		}
	})
	defer taken.Close()
	if fs := listForwards(t, h, "fwr"); len(fs) != 1 || fs[0] != a {
		t.Fatalf("forwards after a restart with port %d taken: %+v, want only %+v", b.HostPort, fs, a)
	}
	if !strings.Contains(log, "host port is in use by another program") || !strings.Contains(log, `"host_port":`+strconv.Itoa(b.HostPort)) {
		t.Fatalf("no warning about the taken port %d in the daemon log:\n%s", b.HostPort, log)
	}
	echoes(t, a, "after SIGTERM")
	taken.Close()

	// Stop: the forward ends and its record is gone.
	h.mustKiln(t, "vm", "stop", "fwr")
	if _, err := net.DialTimeout("tcp", net.JoinHostPort(a.HostAddr, strconv.Itoa(a.HostPort)), 2*time.Second); err == nil {
		t.Fatal("forward of a stopped VM still accepts")
	}
	s, err := store.Open(context.Background(), filepath.Join(h.root, "state", "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	recs, err := s.ListForwards(context.Background())
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.VMID == vm.ID {
			t.Fatalf("a record outlived the stop: %+v", r)
		}
	}
	if fs := listForwards(t, h, "fwr"); len(fs) != 0 {
		t.Fatalf("forwards after stop: %+v", fs)
	}
}

func minPort(a, b api.Forward) api.Forward {
	if a.HostPort < b.HostPort {
		return a
	}
	return b
}

func maxPort(a, b api.Forward) api.Forward {
	if a.HostPort < b.HostPort {
		return b
	}
	return a
}
