package image_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/disk"
	"github.com/kilnvm/kiln/internal/image"
	"github.com/kilnvm/kiln/internal/system"
	"github.com/kilnvm/kiln/internal/testutil"
)

// TestDebootstrapImageBootsSystemd builds a real bookworm image with
// debootstrap, checks what the builder put in it, then boots a clone of it
// under QEMU with the Debian kernel and a minimal busybox initramfs that
// does what kiln's init-mode agent does (mount the root, put an agent in
// /run/kiln, switch_root to /sbin/init). The agent there is a stub shell
// script, standing in for kiln-agent (another package's binary): it proves
// systemd starts the injected unit, with /bin/sh working, on its own.
func TestDebootstrapImageBootsSystemd(t *testing.T) {
	if testing.Short() {
		t.Skip("debootstrap and a TCG boot take about two minutes")
	}
	testutil.RequireRoot(t)
	for _, c := range []string{"debootstrap", "qemu-system-x86_64", "cpio"} {
		testutil.RequireCommand(t, c)
	}
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	img, err := e.store.BuildDebootstrap(ctx, "bookworm", image.Debootstrap{Suite: "bookworm"}, image.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("debootstrap image built in %s: %d MiB of content in a %d MiB filesystem",
		time.Since(start).Round(time.Second), img.ContentBytes>>20, img.SizeBytes>>20)
	if !img.HasSystemd || !strings.HasPrefix(img.Source, "debootstrap:bookworm http") {
		t.Fatalf("image %+v: want systemd and a debootstrap source", img)
	}
	unit, err := disk.ReadExt4File(ctx, runner, img.RootFS, proto.SystemdUnitPath)
	if err != nil || string(unit) != image.SystemdUnit {
		t.Fatalf("unit: %q, %v", unit, err)
	}
	if id := stat(t, img.RootFS, "/etc/machine-id"); id.Size != 0 {
		t.Errorf("machine-id holds %d bytes; every VM would share it", id.Size)
	}
	out, err := system.Command(ctx, runner, "debugfs", "-R", "ls /var/cache/apt/archives", img.RootFS)
	if err != nil || strings.Contains(string(out), ".deb") {
		t.Errorf("downloaded packages left in the image: %s (%v)", out, err)
	}
	if out, err := system.Command(ctx, runner, "e2fsck", "-f", "-n", img.RootFS); err != nil {
		t.Fatalf("image does not check clean: %v\n%s", err, out)
	}

	console := bootImage(t, ctx, img)
	t.Logf("booted in %s", console.took.Round(time.Second))
	for _, want := range []string{"KILN-STUB-AGENT service", "Multi-User System"} {
		if !strings.Contains(console.text, want) {
			t.Errorf("console lacks %q", want)
		}
	}
}

type bootResult struct {
	text string
	took time.Duration
}

// bootImage boots a sparse clone of img and waits until the stub agent has
// been started by systemd and multi-user.target is reached.
func bootImage(t *testing.T, ctx context.Context, img image.Image) bootResult {
	t.Helper()
	vmlinuz, modules := testutil.DebianKernel(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root.img")
	if err := (disk.SparseCopy{}).Clone(ctx, img.RootFS, root); err != nil {
		t.Fatal(err)
	}
	initrd := buildTestInitramfs(t, dir, modules)
	log := filepath.Join(dir, "console.log")
	cmd := exec.Command("qemu-system-x86_64",
		// icount gives the guest clocks that agree with each other on a
		// loaded host; without it a stock kernel can hang calibrating the
		// TSC (the same choice as internal/vmm/qemu).
		"-M", "microvm,pit=on,pic=on,rtc=on", "-accel", "tcg", "-icount", "shift=auto", "-cpu", "max",
		"-m", "1024", "-smp", "1", "-nodefaults", "-no-reboot", "-display", "none",
		"-kernel", vmlinuz, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 loglevel=4 systemd.show_status=1",
		"-serial", "file:"+log,
		"-drive", "id=root,file="+root+",format=raw,if=none,cache=unsafe",
		"-device", "virtio-blk-device,drive=root")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	var text string
	deadline := time.Now().Add(4 * time.Minute)
	for {
		data, _ := os.ReadFile(log)
		text = string(data)
		if strings.Contains(text, "KILN-STUB-AGENT") && strings.Contains(text, "Multi-User System") {
			return bootResult{text: text, took: time.Since(start)}
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("QEMU exited (%v) before the guest was up; stderr: %s\nconsole:\n%s", err, stderr.String(), tail(text, 4000))
		case <-time.After(200 * time.Millisecond):
		}
		if strings.Contains(text, "KILN-TEST-FAIL") || time.Now().After(deadline) {
			t.Fatalf("guest did not start the agent unit and reach multi-user.target; console:\n%s", tail(text, 6000))
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// testInit does, in shell, what the init-mode kiln-agent does before
// switch_root.
const testInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
while read m; do insmod /lib/modules/$m.ko || echo "KILN-TEST-FAIL insmod $m"; done < /modules.list
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
mkdir -p /newroot
mount -t ext4 /dev/vda /newroot || { echo "KILN-TEST-FAIL mount root"; poweroff -f; }
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run
mkdir -p /newroot/run/kiln
cp /stub-agent /newroot/run/kiln/kiln-agent
chmod 0755 /newroot/run/kiln/kiln-agent
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
`

// stubAgentService is what systemd runs through the injected unit; it runs
// under the image's own /bin/sh.
const stubAgentService = `#!/bin/sh
echo "KILN-STUB-AGENT $*" > /dev/ttyS0
exec sleep infinity
`

// buildTestInitramfs writes a newc cpio with busybox, the modules needed
// to mount an ext4 root on virtio-blk (in load order), the init script and
// the stub agent.
func buildTestInitramfs(t *testing.T, dir, modules string) string {
	t.Helper()
	tree := filepath.Join(dir, "initramfs")
	mods := []struct{ name, path string }{
		{"virtio_ring", "kernel/drivers/virtio/virtio_ring.ko"},
		{"virtio", "kernel/drivers/virtio/virtio.ko"},
		{"virtio_mmio", "kernel/drivers/virtio/virtio_mmio.ko"},
		{"virtio_blk", "kernel/drivers/block/virtio_blk.ko"},
		{"crc32c_generic", "kernel/crypto/crc32c_generic.ko"},
		{"crc16", "kernel/lib/crc16.ko"},
		{"mbcache", "kernel/fs/mbcache.ko"},
		{"jbd2", "kernel/fs/jbd2/jbd2.ko"},
		{"ext4", "kernel/fs/ext4/ext4.ko"},
	}
	var list strings.Builder
	for _, d := range []string{"bin", "dev", "proc", "sys", "lib/modules"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range mods {
		data, err := os.ReadFile(filepath.Join(modules, m.path))
		if err != nil {
			t.Fatalf("kernel module %s: %v", m.name, err)
		}
		if err := os.WriteFile(filepath.Join(tree, "lib/modules", m.name+".ko"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintln(&list, m.name)
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skipf("needs busybox-static: %v", err)
	}
	files := map[string]struct {
		data []byte
		mode os.FileMode
	}{
		"bin/busybox":  {bb, 0o755},
		"init":         {[]byte(testInit), 0o755},
		"stub-agent":   {[]byte(stubAgentService), 0o755},
		"modules.list": {[]byte(list.String()), 0o644},
	}
	for name, f := range files {
		if err := os.WriteFile(filepath.Join(tree, name), f.data, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "initrd.img")
	cmd := exec.Command("sh", "-c", "find . | cpio -o -H newc -R 0:0 --quiet > "+out)
	cmd.Dir = tree
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, msg)
	}
	return out
}

// TestBuildDebootstrapFailsCleanly runs debootstrap against a mirror that
// does not exist: the build fails with debootstrap's complaint and leaves
// nothing, and a cancelled build does the same.
func TestBuildDebootstrapFailsCleanly(t *testing.T) {
	testutil.RequireCommand(t, "debootstrap")
	e := newEnv(t)
	ctx := context.Background()
	_, err := e.store.BuildDebootstrap(ctx, "nomirror", image.Debootstrap{Suite: "bookworm", Mirror: "file:///nonexistent/debian"}, image.BuildOptions{})
	if err == nil || !strings.Contains(err.Error(), "debootstrap bookworm from file:///nonexistent/debian") || api.HintOf(err) == "" {
		t.Fatalf("got %v (hint %q)", err, api.HintOf(err))
	}
	e.assertStoreHolds(t)

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = e.store.BuildDebootstrap(cctx, "cancelled", image.Debootstrap{Suite: "bookworm"}, image.BuildOptions{})
	if !errors.Is(err, context.Canceled) || api.ClassOf(err) != api.ClassCanceled {
		t.Fatalf("cancelled build: %v", err)
	}
	e.assertStoreHolds(t)
}
