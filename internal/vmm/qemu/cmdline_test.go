package qemu

import (
	"bytes"
	"strings"
	"sync"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/vmm"
)

// syncBuffer is a bytes.Buffer safe for a logger and a reader at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestCmdline(t *testing.T) {
	base := vmm.Spec{
		Name: "box", Dir: "/run/kiln/vms/box", CPUs: 2, MemoryMiB: 512,
		Kernel: "/k/vmlinuz", Initrd: "/k/initrd", Cmdline: "console=ttyS0 quiet",
		SerialLog: "/var/log/kiln/box.console",
	}
	tcg := []string{"-accel", "tcg", "-icount", "shift=auto"}
	kvm := []string{"-accel", "kvm"}
	common := func(accel []string, cpu, smp string) []string {
		return append(append([]string{
			"-name", "box",
			"-M", "microvm,pit=on,pic=on,rtc=on",
		}, accel...), []string{
			"-cpu", cpu,
			"-m", "512", "-smp", smp,
			"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
			"-kernel", "/k/vmlinuz", "-initrd", "/k/initrd",
			"-append", "console=ttyS0 quiet",
			"-chardev", "file,id=console,path=/var/log/kiln/box.console",
			"-serial", "chardev:console",
		}...)
	}
	serial := []string{
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path=/run/kiln/vms/box/agent.sock,server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=kiln.agent",
	}
	tail := []string{
		"-qmp", "unix:/run/kiln/vms/box/qmp.sock,server=on,wait=off",
		"-pidfile", "/run/kiln/vms/box/qemu.pid",
	}
	cat := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}

	tests := []struct {
		name    string
		spec    func(s *vmm.Spec)
		accel   string
		channel string
		release Release
		want    []string
	}{
		{
			name: "tcg serial, one vCPU, no devices", accel: AccelTCG, channel: vmm.ChannelSerial,
			want: cat(common(tcg, "max", "1"), serial, tail),
		},
		{
			name: "kvm vsock, disks and nics", accel: AccelKVM, channel: vmm.ChannelVsock,
			spec: func(s *vmm.Spec) {
				s.CID = 42
				s.Disks = []vmm.Disk{{Path: "/d/root.ext4"}, {Path: "/d/seed.ext4", ReadOnly: true}}
				s.NICs = []vmm.NIC{{TAP: "kiln-tap0", MAC: "52:54:00:12:34:56"}, {TAP: "kiln-tap1"}}
			},
			want: cat(common(kvm, "host", "2"), []string{
				"-drive", "id=disk0,file=/d/root.ext4,format=raw,if=none",
				"-device", "virtio-blk-device,drive=disk0",
				"-drive", "id=disk1,file=/d/seed.ext4,format=raw,if=none,readonly=on",
				"-device", "virtio-blk-device,drive=disk1",
				"-netdev", "tap,id=net0,ifname=kiln-tap0,script=no,downscript=no",
				"-device", "virtio-net-device,netdev=net0,mac=52:54:00:12:34:56",
				"-netdev", "tap,id=net1,ifname=kiln-tap1,script=no,downscript=no",
				"-device", "virtio-net-device,netdev=net1",
				"-device", "vhost-vsock-device,guest-cid=42",
			}, tail),
		},
		{
			name: "user-mode nic", accel: AccelKVM, channel: vmm.ChannelVsock,
			spec: func(s *vmm.Spec) {
				s.CID = 42
				s.NICs = []vmm.NIC{{User: true, MAC: "52:54:00:12:34:56"}}
			},
			want: cat(common(kvm, "host", "2"), []string{
				"-netdev", "user,id=net0",
				"-device", "virtio-net-device,netdev=net0,mac=52:54:00:12:34:56",
				"-device", "vhost-vsock-device,guest-cid=42",
			}, tail),
		},
		{
			name: "runas on qemu 7.2", accel: AccelTCG, channel: vmm.ChannelSerial, release: Release{7, 2, 22},
			spec: func(s *vmm.Spec) { s.RunAsUID, s.RunAsGID = 995, 994 },
			want: cat(common(tcg, "max", "1"), serial, tail, []string{"-runas", "995:994"}),
		},
		{
			name: "run-with on qemu 9.1", accel: AccelTCG, channel: vmm.ChannelSerial, release: Release{9, 1, 0},
			spec: func(s *vmm.Spec) { s.RunAsUID, s.RunAsGID = 995, 994 },
			want: cat(common(tcg, "max", "1"), serial, tail, []string{"-run-with", "user=995:994"}),
		},
		{
			name: "no initrd, default console log, commas escaped", accel: AccelTCG, channel: vmm.ChannelSerial,
			spec: func(s *vmm.Spec) {
				s.Initrd = ""
				s.SerialLog = ""
				s.Dir = "/tmp/a,b"
				s.Disks = []vmm.Disk{{Path: "/d/x,format=qcow2"}}
			},
			want: []string{
				"-name", "box",
				"-M", "microvm,pit=on,pic=on,rtc=on",
				"-accel", "tcg", "-icount", "shift=auto", "-cpu", "max",
				"-m", "512", "-smp", "1",
				"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
				"-kernel", "/k/vmlinuz",
				"-append", "console=ttyS0 quiet",
				"-chardev", "file,id=console,path=/tmp/a,,b/console.log",
				"-serial", "chardev:console",
				"-drive", "id=disk0,file=/d/x,,format=qcow2,format=raw,if=none",
				"-device", "virtio-blk-device,drive=disk0",
				"-device", "virtio-serial-device",
				"-chardev", "socket,id=agent,path=/tmp/a,,b/agent.sock,server=on,wait=off",
				"-device", "virtserialport,chardev=agent,name=kiln.agent",
				"-qmp", "unix:/tmp/a,,b/qmp.sock,server=on,wait=off",
				"-pidfile", "/tmp/a,b/qemu.pid",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := base
			if tt.spec != nil {
				tt.spec(&spec)
			}
			got := Cmdline(spec, PathsFor(spec.Dir), tt.accel, tt.channel, tt.release)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("argv mismatch\n got: %q\nwant: %q", got, tt.want)
			}
		})
	}
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		out  string
		want Release
		bad  bool
	}{
		{out: "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n", want: Release{7, 2, 22}},
		{out: "QEMU emulator version 9.1.0\n", want: Release{9, 1, 0}},
		{out: "QEMU emulator version 10.0\n", want: Release{10, 0, 0}},
		{out: "Firecracker v1.8.0\n", bad: true},
		{out: "", bad: true},
	}
	for _, tt := range tests {
		got, err := ParseVersion(tt.out)
		if tt.bad {
			if err == nil {
				t.Errorf("ParseVersion(%q) = %v, want an error", tt.out, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v", tt.out, got, err, tt.want)
		}
	}
	if !(Release{9, 1, 0}).runWithUser() || (Release{9, 0, 2}).runWithUser() || !(Release{10, 0, 0}).runWithUser() {
		t.Error("runWithUser threshold is not 9.1")
	}
}

func TestCIDFor(t *testing.T) {
	seen := map[uint32]string{}
	for _, name := range []string{"a", "b", "box", "box2", "dev-1", "dev-2"} {
		c := CIDFor(name)
		if c < 3 || c == 0xffffffff {
			t.Errorf("CIDFor(%q) = %d, a reserved CID", name, c)
		}
		if c != CIDFor(name) {
			t.Errorf("CIDFor(%q) is not deterministic", name)
		}
		if other, ok := seen[c]; ok {
			t.Errorf("CIDFor(%q) = CIDFor(%q) = %d", name, other, c)
		}
		seen[c] = name
	}
}

func TestValidateSpec(t *testing.T) {
	good := vmm.Spec{Name: "box", Dir: "/run/kiln/box", CPUs: 1, MemoryMiB: 256, Kernel: "/k/vmlinuz",
		Disks: []vmm.Disk{{Path: "/d/root"}}, NICs: []vmm.NIC{{TAP: "tap0", MAC: "52:54:00:00:00:01"}}}
	if err := validateSpec(good, PathsFor(good.Dir), vmm.ChannelSerial); err != nil {
		t.Fatalf("good spec: %v", err)
	}
	tests := []struct {
		name    string
		mod     func(s *vmm.Spec)
		channel string
		errHas  string
	}{
		{"bad name", func(s *vmm.Spec) { s.Name = "Box!" }, "", "invalid vm name"},
		{"relative dir", func(s *vmm.Spec) { s.Dir = "run/box" }, "", `runtime dir "run/box" is not an absolute path`},
		{"no cpus", func(s *vmm.Spec) { s.CPUs = 0 }, "", "cpus 0 out of range"},
		{"tiny memory", func(s *vmm.Spec) { s.MemoryMiB = 8 }, "", "memory 8 MiB"},
		{"relative kernel", func(s *vmm.Spec) { s.Kernel = "vmlinuz" }, "", `kernel "vmlinuz" is not an absolute path`},
		{"relative initrd", func(s *vmm.Spec) { s.Initrd = "initrd" }, "", `initrd "initrd"`},
		{"relative serial log", func(s *vmm.Spec) { s.SerialLog = "c.log" }, "", `serial log "c.log"`},
		{"relative disk", func(s *vmm.Spec) { s.Disks[0].Path = "root" }, "", `disk 0 path "root"`},
		{"tap with comma", func(s *vmm.Spec) { s.NICs[0].TAP = "tap0,script=/x" }, "", "invalid tap name"},
		{"bad mac", func(s *vmm.Spec) { s.NICs[0].MAC = "52:54:00:00:00" }, "", "invalid mac"},
		{"user nic with a tap", func(s *vmm.Spec) { s.NICs[0].User = true }, "", "user-mode nic takes no tap"},
		{"negative uid", func(s *vmm.Spec) { s.RunAsUID = -1 }, "", "negative run-as"},
		{"reserved cid", func(s *vmm.Spec) { s.CID = 2 }, vmm.ChannelVsock, "cid 2 is reserved"},
		{"socket path too long", func(s *vmm.Spec) { s.Dir = "/" + strings.Repeat("d", 100) }, "", "longer than 107 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := good
			s.Disks = append([]vmm.Disk(nil), good.Disks...)
			s.NICs = append([]vmm.NIC(nil), good.NICs...)
			tt.mod(&s)
			ch := tt.channel
			if ch == "" {
				ch = vmm.ChannelSerial
			}
			err := validateSpec(s, PathsFor(s.Dir), ch)
			if err == nil || !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("err = %v, want one containing %q", err, tt.errHas)
			}
			if api.ClassOf(err) != api.ClassBadRequest {
				t.Errorf("class = %s, want bad_request", api.ClassOf(err))
			}
		})
	}
}
