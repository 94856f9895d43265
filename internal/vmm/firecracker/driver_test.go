package firecracker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/vmm"
)

func writeScript(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "firecracker")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestProbe(t *testing.T) {
	ctx := context.Background()
	if err := New(Config{Binary: "/nonexistent/firecracker"}).Probe(ctx); !errors.Is(err, api.ErrFailedPrecondition) {
		t.Errorf("missing binary: %v", err)
	}
	old := writeScript(t, `echo "Firecracker v1.4.1"`)
	if err := New(Config{Binary: old}).Probe(ctx); err == nil || !strings.Contains(err.Error(), "older than the minimum 1.8.0") {
		t.Errorf("old binary: %v", err)
	}
	ok := writeScript(t, `echo "Firecracker v1.16.1"`)
	if err := New(Config{Binary: ok}).Probe(ctx); err != nil {
		t.Errorf("good binary: %v", err)
	}
	noKVM := New(Config{Binary: ok, KVM: func() error { return errors.New("no kvm") }})
	if err := noKVM.ProbeKVM(); err == nil {
		t.Error("ProbeKVM ignored the host view")
	}
}

// A VMM that dies before its API answers fails Start with its log, and
// leaves no pid file or socket behind.
func TestStartFailsCleanlyWhenVMMExits(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "fcdrv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	kernel := filepath.Join(dir, "vmlinux")
	disk := filepath.Join(dir, "root.ext4")
	for f, content := range map[string]string{kernel: "\x7fELF", disk: "x"} {
		if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	bin := writeScript(t, `[ "$1" = --version ] && { echo "Firecracker v1.16.1"; exit 0; }; echo "cannot open /dev/kvm" >&2; exit 1`)
	d := New(Config{Binary: bin})
	spec := vmm.Spec{Name: "box", Dir: filepath.Join(dir, "run"), CPUs: 1, MemoryMiB: 128, Kernel: kernel,
		Disks: []vmm.Disk{{Path: disk}}, SerialLog: filepath.Join(dir, "console.log")}
	_, err = d.Start(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "cannot open /dev/kvm") {
		t.Fatalf("Start = %v, want the VMM's last words", err)
	}
	p := PathsFor(spec.Dir)
	for _, f := range []string{p.API, p.Vsock, p.PIDFile} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s left behind", f)
		}
	}
	// A bad spec fails before any process starts.
	spec.Kernel = filepath.Join(dir, "missing")
	if _, err := d.Start(context.Background(), spec); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("missing kernel: %v", err)
	}
}
