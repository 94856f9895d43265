package firecracker

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kilnvm/kiln/internal/vmm"
)

// Firecracker starts under umask 077 whatever the daemon's umask, with
// its own argv.
func TestStartUnderPrivateUmask(t *testing.T) {
	old := syscall.Umask(0o022)
	syscall.Umask(old)
	if old&0o077 == 0o077 {
		t.Skipf("the test process already has umask %04o", old)
	}
	dir, err := os.MkdirTemp("/tmp", "fcumask-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	kernel, disk := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "root.ext4")
	for _, f := range []string{kernel, disk} {
		if err := os.WriteFile(f, []byte("\x7fELF"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	bin := writeScript(t, `[ "$1" = --version ] && { echo "Firecracker v1.16.1"; exit 0; }; echo "umask=$(umask) args=$*" >&2; exit 1`)
	spec := vmm.Spec{Name: "box", Dir: filepath.Join(dir, "run"), CPUs: 1, MemoryMiB: 128, Kernel: kernel,
		Disks: []vmm.Disk{{Path: disk}}, SerialLog: filepath.Join(dir, "console.log")}
	_, err = New(Config{Binary: bin}).Start(context.Background(), spec)
	if err == nil {
		t.Fatal("Start of a VMM that exits succeeded")
	}
	want := "umask=0077 args=--api-sock " + PathsFor(spec.Dir).API + " --id box"
	if !strings.Contains(err.Error(), want) {
		t.Errorf("Start = %v\nwant the VMM to report %q", err, want)
	}
	if now := syscall.Umask(old); now != old {
		t.Errorf("daemon umask changed from %04o to %04o", old, now)
	}
}
