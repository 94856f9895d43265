// Command bootprobe is a test /init for the kernel package's boot test: it
// loads the modules the base initramfs lists, mounts the virtio disk and
// prints what it finds on the console, then powers the VM off. Every line
// the test looks for starts with "KILN-".
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if err := run(); err != nil {
		fmt.Println("KILN-PROBE-FAIL:", err)
	} else {
		fmt.Println("KILN-PROBE-DONE")
	}
	unix.Sync()
	// Power off ends QEMU where the machine supports it; otherwise a
	// reset does, as the test runs QEMU with -no-reboot.
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {}
}

func run() error {
	for _, m := range []struct{ src, dir, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, m.dir, m.fs, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s: %w", m.dir, err)
		}
	}
	list, err := os.ReadFile("/kiln/modules.list")
	if err != nil {
		return err
	}
	n := 0
	for _, p := range strings.Fields(string(list)) {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("load %s: %w", p, err)
		}
		n++
	}
	fmt.Printf("KILN-MODULES-LOADED: %d\n", n)

	if err := waitFor("/dev/vda", func() bool { _, err := os.Stat("/dev/vda"); return err == nil }); err != nil {
		return err
	}
	if err := os.MkdirAll("/mnt", 0o755); err != nil {
		return err
	}
	if err := unix.Mount("/dev/vda", "/mnt", "ext4", unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mount /dev/vda: %w", err)
	}
	marker, err := os.ReadFile("/mnt/marker")
	if err != nil {
		return err
	}
	fmt.Printf("KILN-MARKER: %s\n", strings.TrimSpace(string(marker)))
	if err := unix.Unmount("/mnt", 0); err != nil {
		return fmt.Errorf("unmount: %w", err)
	}

	var ports []string
	if err := waitFor("a named virtio-serial port", func() bool {
		ports, _ = filepath.Glob("/sys/class/virtio-ports/*/name")
		return len(ports) > 0
	}); err != nil {
		return err
	}
	for _, p := range ports {
		name, _ := os.ReadFile(p)
		fmt.Printf("KILN-PORT: %s=%s\n", filepath.Base(filepath.Dir(p)), strings.TrimSpace(string(name)))
	}
	return nil
}

// waitFor polls cond for up to 30 s: devices appear asynchronously after
// their driver loads.
func waitFor(what string, cond func() bool) error {
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}
