package firecracker

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/guest"
	"github.com/kilnvm/kiln/internal/vmm"
	"github.com/kilnvm/kiln/internal/vmm/firecracker/fcemu"
)

// startEmulator serves a NoBoot emulator (state machine only) on a socket.
func startEmulator(t *testing.T) (*Client, string) {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "fcemu-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	emu, err := fcemu.New(fcemu.Config{ID: "box", WorkDir: filepath.Join(dir, "w"), NoBoot: true})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, APISocketName)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- emu.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	c := NewClient(sock)
	wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer wcancel()
	if err := c.WaitReady(wctx, 5*time.Second, nil); err != nil {
		t.Fatal(err)
	}
	return c, dir
}

func TestEmulatorStateMachine(t *testing.T) {
	c, dir := startEmulator(t)
	ctx := context.Background()
	for _, f := range []string{"k", "root"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := c.Version(ctx); err != nil || v != fcemu.SpecVersion {
		t.Fatalf("version = %q, %v", v, err)
	}
	// Post-boot operations fail before InstanceStart.
	err := c.Pause(ctx)
	var ae *APIError
	if !errors.As(err, &ae) || !strings.Contains(ae.Fault, "before starting") || ae.Request != "PATCH /vm" {
		t.Fatalf("pause before start = %v", err)
	}
	if !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("a 400 should class as bad_request: %v", err)
	}
	// InstanceStart without a boot source is refused.
	if err := c.Action(ctx, ActionInstanceStart); err == nil || !strings.Contains(err.Error(), "kernel configuration") {
		t.Fatalf("start without boot source = %v", err)
	}
	spec := vmm.Spec{Name: "box", Dir: dir, CPUs: 2, MemoryMiB: 256, Kernel: filepath.Join(dir, "k"),
		Disks: []vmm.Disk{{Path: filepath.Join(dir, "root")}}, CID: 3}
	for _, r := range Plan(spec, PathsFor(dir), Limits{}) {
		if err := c.Do(ctx, r, nil); err != nil {
			t.Fatalf("%s: %v", r, err)
		}
	}
	// A second root device is refused with Firecracker's message, verbatim.
	err = c.Do(ctx, Request{"PUT", "/drives/other", Drive{DriveID: "other", PathOnHost: "/x", IsRootDevice: true}}, nil)
	if err == nil || !strings.Contains(err.Error(), "PUT /drives/other") || !strings.Contains(err.Error(), "A root block device already exists!") {
		t.Fatalf("second root = %v", err)
	}
	// Path and body ids must agree.
	if err := c.Do(ctx, Request{"PUT", "/drives/a", Drive{DriveID: "b", PathOnHost: "/x"}}, nil); err == nil {
		t.Fatal("mismatched drive id accepted")
	}
	// The spec validator runs on the server too.
	if err := c.Do(ctx, Request{"PUT", "/machine-config", map[string]any{"vcpu_count": 0, "mem_size_mib": 1}}, nil); err == nil ||
		!strings.Contains(err.Error(), "below the minimum") {
		t.Fatalf("vcpu 0 = %v", err)
	}
	if in, err := c.Describe(ctx); err != nil || in.State != "Not started" {
		t.Fatalf("describe = %+v, %v", in, err)
	}
	if err := c.Action(ctx, ActionInstanceStart); err != nil {
		t.Fatal(err)
	}
	if in, err := c.Describe(ctx); err != nil || in.State != "Running" {
		t.Fatalf("describe = %+v, %v", in, err)
	}
	// Pre-boot operations fail after InstanceStart; pause works.
	err = c.Do(ctx, Plan(spec, PathsFor(dir), Limits{})[2], nil)
	if err == nil || !strings.Contains(err.Error(), "not supported after starting") {
		t.Fatalf("machine-config after start = %v", err)
	}
	if err := c.Action(ctx, ActionInstanceStart); err == nil {
		t.Fatal("second InstanceStart accepted")
	}
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if in, _ := c.Describe(ctx); in.State != "Paused" {
		t.Fatalf("state after pause = %q", in.State)
	}
	// The hybrid vsock socket exists; with no guest, a CONNECT is closed.
	_, err = guest.HybridVsock{SocketPath: PathsFor(dir).Vsock, Port: 1024, Timeout: 5 * time.Second}.Open(ctx)
	if err == nil || !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("vsock connect without guest = %v", err)
	}
}
