package kernel

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/cpio"
	"github.com/kilnvm/kiln/internal/testutil"
)

// TestBootDebianKernel boots the Debian kernel under QEMU (TCG) with the
// base initramfs this package builds plus a second archive holding a test
// /init (testdata/bootprobe). The probe loads the listed modules in order,
// mounts an ext4 virtio disk and reads a marker, and lists the
// virtio-serial ports. This proves the module set and its order really
// bring up the devices a kiln guest uses, and that an archive appended
// after the base one is unpacked.
func TestBootDebianKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	testutil.RequireRoot(t)
	for _, c := range []string{"qemu-system-x86_64", "mkfs.ext4"} {
		testutil.RequireCommand(t, c)
	}
	vmlinuz, modulesDir := testutil.DebianKernel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	s := newTestStore(t, nil)
	k, err := s.Import(ctx, "debian", Source{Vmlinuz: vmlinuz, ModulesDir: modulesDir})
	if err != nil {
		t.Fatal(err)
	}
	a := k.Artifacts()
	work := t.TempDir()

	// The probe, built static as the agent will be.
	probe := filepath.Join(work, "bootprobe")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", probe, "./testdata/bootprobe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the probe: %v\n%s", err, out)
	}

	// initrd = base initramfs + an appended archive with /init.
	initrd := filepath.Join(work, "initrd")
	base, err := os.ReadFile(a.Initramfs)
	must(t, err)
	probeBin, err := os.ReadFile(probe)
	must(t, err)
	var extra bytes.Buffer
	w := cpio.NewWriter(&extra)
	must(t, w.WriteFile(proto.InitPath, 0o755, probeBin))
	must(t, w.Close())
	must(t, os.WriteFile(initrd, append(base, extra.Bytes()...), 0o644))

	// A small ext4 disk holding a marker only this run knows.
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	marker := "hello from kiln " + hex.EncodeToString(nonce[:])
	content := filepath.Join(work, "content")
	must(t, os.MkdirAll(content, 0o755))
	must(t, os.WriteFile(filepath.Join(content, "marker"), []byte(marker+"\n"), 0o644))
	disk := filepath.Join(work, "disk.ext4")
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-d", content, disk, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}

	console := filepath.Join(work, "console.log")
	qemuCtx, qemuCancel := context.WithTimeout(ctx, 90*time.Second)
	defer qemuCancel()
	qemu := exec.CommandContext(qemuCtx, "qemu-system-x86_64",
		"-M", "microvm,pit=on,pic=on,rtc=on", "-accel", "tcg,thread=multi", "-cpu", "max",
		"-m", "512", "-smp", "2", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-serial", "file:"+console,
		"-kernel", a.Vmlinuz, "-initrd", initrd,
		"-append", "console=ttyS0 reboot=k panic=-1 tsc_early_khz="+hostTSCkHz(t),
		"-drive", "id=root,file="+disk+",format=raw,if=none", "-device", "virtio-blk-device,drive=root",
		"-device", "virtio-serial-device", "-chardev", "null,id=agent",
		"-device", "virtserialport,chardev=agent,name="+proto.SerialPortName,
	)
	var qemuOut bytes.Buffer
	qemu.Stdout, qemu.Stderr = &qemuOut, &qemuOut
	start := time.Now()
	err = qemu.Run()
	took := time.Since(start)
	log, _ := os.ReadFile(console)
	if errors.Is(qemuCtx.Err(), context.DeadlineExceeded) {
		t.Fatalf("QEMU did not exit within 90 s\nconsole:\n%s\nqemu:\n%s", tail(log), qemuOut.String())
	}
	if err != nil {
		t.Fatalf("qemu: %v\n%s\nconsole:\n%s", err, qemuOut.String(), tail(log))
	}
	t.Logf("guest ran %.1fs", took.Seconds())

	out := string(log)
	if i := strings.Index(out, "KILN-PROBE-FAIL:"); i >= 0 {
		t.Fatalf("probe failed: %s\nconsole:\n%s", firstLine(out[i:]), tail(log))
	}
	for _, want := range []string{
		"KILN-MODULES-LOADED: " + strconv.Itoa(len(k.Modules)),
		"KILN-MARKER: " + marker,
		"=" + proto.SerialPortName,
		"KILN-PROBE-DONE",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %q\nconsole:\n%s", want, tail(log))
		}
	}
}

// hostTSCkHz is the host's TSC frequency, which a TCG guest's TSC runs at.
// The guest kernel is told it on its command line: on a loaded host its
// PIT calibration fails, it marks the TSC unstable, and its clock stays
// at 0 until the boot stalls (measured here; with the frequency given, the
// same boot takes 12-18 s under the same load).
func hostTSCkHz(t testing.TB) string {
	data, err := os.ReadFile("/proc/cpuinfo")
	must(t, err)
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			if mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && mhz > 0 {
				return strconv.Itoa(int(mhz * 1000))
			}
		}
	}
	return "1000000"
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// tail is the end of a console log, enough to see why a boot failed.
func tail(b []byte) string {
	const n = 6000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(bytes.ToValidUTF8(b, []byte("?")))
}
