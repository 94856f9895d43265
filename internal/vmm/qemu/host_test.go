package qemu

import (
	"errors"
	"io/fs"
	"log/slog"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/vmm"
)

// fakeHost is a HostView for one host shape.
func fakeHost(kvmErr error, pvm, vhostVsock bool) HostView {
	return HostView{
		KVM:        func() error { return kvmErr },
		PVM:        func() bool { return pvm },
		VhostVsock: func() bool { return vhostVsock },
	}
}

func TestDecideAccel(t *testing.T) {
	tests := []struct {
		name      string
		host      HostView
		requested string
		accel     string
		channel   string
		noteHas   string // "" means the note must be empty
		summary   string
		errClass  api.Class
		errHas    string
	}{
		{
			name: "no kvm, auto", host: fakeHost(fs.ErrNotExist, false, false), requested: "auto",
			accel: "tcg", channel: "serial", noteHas: "/dev/kvm: does not exist",
			summary: "qemu: [kvm=absent vhost-vsock=absent ret=tcg/serial]",
		},
		{
			name: "kvm without access, empty means auto", host: fakeHost(fs.ErrPermission, false, false), requested: "",
			accel: "tcg", channel: "serial", noteHas: "permission denied",
			summary: "qemu: [kvm=no-access vhost-vsock=absent ret=tcg/serial]",
		},
		{
			name: "kvm usable, auto", host: fakeHost(nil, false, false), requested: "auto",
			accel: "kvm", channel: "serial",
			summary: "qemu: [kvm=usable vhost-vsock=absent ret=kvm/serial]",
		},
		{
			name: "kvm usable with vhost-vsock", host: fakeHost(nil, false, true), requested: "auto",
			accel: "kvm", channel: "vsock",
			summary: "qemu: [kvm=usable vhost-vsock=present ret=kvm/vsock]",
		},
		{
			name: "pvm-only host falls back to tcg", host: fakeHost(nil, true, false), requested: "auto",
			accel: "tcg", channel: "serial", noteHas: "hangs right after decompression",
			summary: "qemu: [kvm=pvm-only vhost-vsock=absent ret=tcg/serial]",
		},
		{
			name: "pvm-only host with vhost-vsock still uses serial under tcg", host: fakeHost(nil, true, true), requested: "auto",
			accel: "tcg", channel: "serial", noteHas: "kiln doctor",
			summary: "qemu: [kvm=pvm-only vhost-vsock=present ret=tcg/serial]",
		},
		{
			name: "no /dev/kvm but kvm_pvm loaded", host: fakeHost(fs.ErrNotExist, true, false), requested: "auto",
			accel: "tcg", channel: "serial", noteHas: "not usable",
			summary: "qemu: [kvm=absent vhost-vsock=absent ret=tcg/serial]",
		},
		{
			name: "tcg requested on a kvm host", host: fakeHost(nil, false, true), requested: "tcg",
			accel: "tcg", channel: "serial",
			summary: "qemu: [kvm=usable vhost-vsock=present ret=tcg/serial]",
		},
		{
			name: "kvm requested and usable", host: fakeHost(nil, false, false), requested: "kvm",
			accel: "kvm", channel: "serial",
			summary: "qemu: [kvm=usable vhost-vsock=absent ret=kvm/serial]",
		},
		{
			name: "kvm requested on a pvm host", host: fakeHost(nil, true, false), requested: "kvm",
			errClass: api.ClassFailedPrecondition, errHas: "PVM-only",
			summary: "qemu: [kvm=pvm-only vhost-vsock=absent ret=error]",
		},
		{
			name: "kvm requested without kvm", host: fakeHost(fs.ErrNotExist, false, false), requested: "kvm",
			errClass: api.ClassFailedPrecondition, errHas: "/dev/kvm is not usable: does not exist",
			summary: "qemu: [kvm=absent vhost-vsock=absent ret=error]",
		},
		{
			name: "kvm open fails oddly", host: fakeHost(errors.New("device busy"), false, false), requested: "kvm",
			errClass: api.ClassFailedPrecondition, errHas: "device busy",
			summary: "qemu: [kvm=error vhost-vsock=absent ret=error]",
		},
		{
			name: "unknown accel", host: fakeHost(nil, false, false), requested: "hvf",
			errClass: api.ClassBadRequest, errHas: `unknown qemu accel "hvf"`,
			summary: "qemu: [kvm=usable vhost-vsock=absent ret=error]",
		},
		{
			name: "empty host view reads as no kvm", host: HostView{}, requested: "auto",
			accel: "tcg", channel: "serial", noteHas: "does not exist",
			summary: "qemu: [kvm=absent vhost-vsock=absent ret=tcg/serial]",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := decideAccel(tt.host.read(), tt.requested)
			if d.Summary != tt.summary {
				t.Errorf("summary = %q, want %q", d.Summary, tt.summary)
			}
			if tt.errClass != "" {
				if err == nil {
					t.Fatalf("decision %+v, want a %s error", d, tt.errClass)
				}
				if c := api.ClassOf(err); c != tt.errClass {
					t.Errorf("class = %s, want %s (%v)", c, tt.errClass, err)
				}
				if !strings.Contains(err.Error(), tt.errHas) {
					t.Errorf("error %q does not contain %q", err, tt.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Accel != tt.accel || d.Channel != tt.channel {
				t.Errorf("got %s/%s, want %s/%s", d.Accel, d.Channel, tt.accel, tt.channel)
			}
			if tt.noteHas == "" && d.Note != "" {
				t.Errorf("note = %q, want none", d.Note)
			}
			if tt.noteHas != "" && !strings.Contains(d.Note, tt.noteHas) {
				t.Errorf("note %q does not contain %q", d.Note, tt.noteHas)
			}
		})
	}
}

func TestNewLogsSummaryAndFeatures(t *testing.T) {
	var buf syncBuffer
	d := New(Config{Logger: slog.New(slog.NewTextHandler(&buf, nil)), Host: fakeHost(nil, true, false)})
	if got := buf.String(); !strings.Contains(got, `msg="qemu: [kvm=pvm-only vhost-vsock=absent ret=tcg/serial]"`) {
		t.Errorf("log = %q, want the summary line", got)
	}
	f := d.Features()
	if f.Accel != "tcg" || f.Channel != vmm.ChannelSerial || !strings.Contains(f.AccelNote, "PVM-only") {
		t.Errorf("features = %+v", f)
	}
}

func TestNewWithImpossibleAccel(t *testing.T) {
	d := New(Config{Accel: "kvm", Host: fakeHost(fs.ErrNotExist, false, false)})
	f := d.Features()
	if f.Accel != "" || !strings.Contains(f.AccelNote, "/dev/kvm is not usable") {
		t.Errorf("features = %+v, want no accel and the reason", f)
	}
	err := d.Probe(t.Context())
	if api.ClassOf(err) != api.ClassFailedPrecondition {
		t.Errorf("Probe = %v, want failed_precondition", err)
	}
	dir := t.TempDir()
	_, err = d.Start(t.Context(), vmm.Spec{Name: "x", Dir: dir, CPUs: 1, MemoryMiB: 128, Kernel: "/k"})
	if api.ClassOf(err) != api.ClassFailedPrecondition {
		t.Errorf("Start = %v, want failed_precondition", err)
	}
}
