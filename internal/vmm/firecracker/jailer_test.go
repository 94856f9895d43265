package firecracker

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/testutil"
	"github.com/kilnvm/kiln/internal/vmm"
)

func TestJailerArgs(t *testing.T) {
	good := JailerConfig{Binary: "/usr/bin/jailer", UID: 123, GID: 100, ChrootBase: "/var/lib/kiln/jail"}
	tests := []struct {
		name    string
		cfg     func(c *JailerConfig)
		id      string
		exec    string
		want    []string
		wantErr string
	}{
		{name: "plain", id: "web-1", exec: "/usr/bin/firecracker", want: []string{
			"--id", "web-1", "--exec-file", "/usr/bin/firecracker", "--uid", "123", "--gid", "100",
			"--chroot-base-dir", "/var/lib/kiln/jail", "--cgroup-version", "2",
			"--", "--api-sock", "/firecracker.socket"}},
		{name: "cgroups", id: "a", exec: "/fc/firecracker",
			cfg: func(c *JailerConfig) { c.Cgroups = []string{"cpu.max=50000 100000", "memory.max=1073741824"} },
			want: []string{"--id", "a", "--exec-file", "/fc/firecracker", "--uid", "123", "--gid", "100",
				"--chroot-base-dir", "/var/lib/kiln/jail", "--cgroup-version", "2",
				"--cgroup", "cpu.max=50000 100000", "--cgroup", "memory.max=1073741824",
				"--", "--api-sock", "/firecracker.socket"}},
		{name: "root uid", id: "a", exec: "/fc/firecracker", cfg: func(c *JailerConfig) { c.UID = 0 }, wantErr: "non-root"},
		{name: "root gid", id: "a", exec: "/fc/firecracker", cfg: func(c *JailerConfig) { c.GID = 0 }, wantErr: "non-root"},
		{name: "no binary", id: "a", exec: "/fc/firecracker", cfg: func(c *JailerConfig) { c.Binary = "" }, wantErr: "no jailer binary"},
		{name: "relative base", id: "a", exec: "/fc/firecracker", cfg: func(c *JailerConfig) { c.ChrootBase = "jail" }, wantErr: "not an absolute path"},
		{name: "bad id", id: "a/../b", exec: "/fc/firecracker", wantErr: `id "a/../b"`},
		{name: "long id", id: strings.Repeat("a", 65), exec: "/fc/firecracker", wantErr: "1-64"},
		{name: "relative exec", id: "a", exec: "firecracker", wantErr: "exec file"},
		{name: "exec name", id: "a", exec: "/usr/bin/fc", wantErr: `must contain "firecracker"`},
		{name: "bad cgroup", id: "a", exec: "/fc/firecracker", cfg: func(c *JailerConfig) { c.Cgroups = []string{"cpu.max"} }, wantErr: "cgroup setting"},
		{name: "cgroup path", id: "a", exec: "/fc/firecracker", cfg: func(c *JailerConfig) { c.Cgroups = []string{"../x.y=1"} }, wantErr: "cgroup setting"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			got, err := JailerArgs(cfg, tt.id, tt.exec)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, api.ErrBadRequest) {
					t.Fatalf("err = %v, want bad request containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("argv\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestJailLayout(t *testing.T) {
	j := JailFor("/srv/jail", "/usr/local/bin/firecracker", "web-1")
	root := "/srv/jail/firecracker/web-1/root"
	want := Jail{Dir: "/srv/jail/firecracker/web-1", Root: root, Cgroup: "firecracker/web-1",
		Inner: Paths{API: "/firecracker.socket", Vsock: "/vsock.sock", Log: "/firecracker.log", Metrics: "/firecracker.metrics"},
		Host: Paths{API: root + "/firecracker.socket", Vsock: root + "/vsock.sock",
			Log: root + "/firecracker.log", Metrics: root + "/firecracker.metrics"}}
	if !reflect.DeepEqual(j, want) {
		t.Errorf("JailFor = %+v\nwant %+v", j, want)
	}

	spec := vmm.Spec{Name: "web-1", Kernel: "/k/vmlinux", Initrd: "/k/initrd.img",
		Disks: []vmm.Disk{{Path: "/vms/web-1/root.qcow"}, {Path: "/img/data.ext4", ReadOnly: true}}}
	js, links := JailSpec(spec, j)
	if js.Kernel != "/vmlinux" || js.Initrd != "/initrd" || js.Disks[0].Path != "/drive0" || js.Disks[1].Path != "/drive1" || !js.Disks[1].ReadOnly {
		t.Errorf("jailed spec = %+v", js)
	}
	if spec.Disks[0].Path != "/vms/web-1/root.qcow" {
		t.Error("JailSpec changed its input")
	}
	wantLinks := []Link{{"/k/vmlinux", root + "/vmlinux", false}, {"/k/initrd.img", root + "/initrd", true},
		{"/vms/web-1/root.qcow", root + "/drive0", true}, {"/img/data.ext4", root + "/drive1", false}}
	if !reflect.DeepEqual(links, wantLinks) {
		t.Errorf("links\n got %+v\nwant %+v", links, wantLinks)
	}
	// The jailed spec passes the driver's own checks and the plan names
	// only in-chroot paths.
	js.CPUs, js.MemoryMiB, js.CID, js.Dir = 1, 128, 3, "/run/kiln/vms/web-1"
	if err := validateSpec(js, j.Inner); err != nil {
		t.Fatal(err)
	}
	for _, r := range Plan(js, j.Inner, Limits{}) {
		raw, err := json.Marshal(r.Body)
		if err != nil {
			t.Fatal(err)
		}
		if b := string(raw); strings.Contains(b, "/srv/") || strings.Contains(b, "/vms/") || strings.Contains(b, "/k/") {
			t.Errorf("%s %s names a host path: %s", r.Method, r.Path, b)
		}
	}
}

func TestJailLinks(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	kernel, disk := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "root.img")
	for _, f := range []string{kernel, disk} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	base := filepath.Join(dir, "jail")
	if err := CheckSameFilesystem(base, kernel, disk); err != nil {
		t.Fatalf("same filesystem refused: %v", err)
	}
	// /proc is another filesystem: refused before anything is linked.
	err := CheckSameFilesystem(base, kernel, "/proc/version")
	if !errors.Is(err, api.ErrFailedPrecondition) || !strings.Contains(err.Error(), "/proc/version is on another filesystem") {
		t.Errorf("cross-filesystem: %v", err)
	}
	if err := CheckSameFilesystem(base, filepath.Join(dir, "missing")); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("missing file: %v", err)
	}

	j := JailFor(base, "/usr/bin/firecracker", "vm1")
	_, links := JailSpec(vmm.Spec{Kernel: kernel, Disks: []vmm.Disk{{Path: disk}}}, j)
	if err := LinkInto(links, 4321, 4322); err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		var a, b syscall.Stat_t
		if err := syscall.Stat(l.Src, &a); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Stat(l.Dst, &b); err != nil {
			t.Fatal(err)
		}
		if a.Ino != b.Ino {
			t.Errorf("%s is not a hard link of %s", l.Dst, l.Src)
		}
		wantUID := uint32(0)
		if l.Chown {
			wantUID = 4321
		}
		if b.Uid != wantUID {
			t.Errorf("%s owned by %d, want %d", l.Dst, b.Uid, wantUID)
		}
	}
	// Again (stale links) works; a missing source fails and undoes what
	// it linked.
	if err := LinkInto(links, 4321, 4322); err != nil {
		t.Fatalf("relink: %v", err)
	}
	j2 := JailFor(base, "/usr/bin/firecracker", "vm2")
	_, links2 := JailSpec(vmm.Spec{Kernel: kernel, Disks: []vmm.Disk{{Path: filepath.Join(dir, "gone.img")}}}, j2)
	if err := LinkInto(links2, 4321, 4322); err == nil {
		t.Fatal("LinkInto with a missing source succeeded")
	}
	if _, err := os.Stat(filepath.Join(j2.Root, "vmlinux")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed LinkInto left the kernel link: %v", err)
	}

	// Only the jail's links go; the sources stay.
	if err := removeJail(j); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(j.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("removeJail left %s: %v", j.Dir, err)
	}
	for _, f := range []string{kernel, disk} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("removeJail took the source %s: %v", f, err)
		}
	}
	if err := removeJail(j); err != nil {
		t.Errorf("removeJail twice: %v", err)
	}
}

// A shared artefact the jail user cannot read is refused up front; the
// VM's own files are chowned, so their mode does not matter.
func TestCheckReadable(t *testing.T) {
	dir := t.TempDir()
	open, private := filepath.Join(dir, "open"), filepath.Join(dir, "private")
	for f, mode := range map[string]os.FileMode{open: 0o644, private: 0o600} {
		if err := os.WriteFile(f, nil, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(f, mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := checkReadable(Link{Src: open}, 4321, 4321); err != nil {
		t.Errorf("world-readable: %v", err)
	}
	if err := checkReadable(Link{Src: private}, 4321, 4321); !errors.Is(err, api.ErrFailedPrecondition) || !strings.Contains(err.Error(), "not readable by the jail user 4321:4321") {
		t.Errorf("private: %v", err)
	}
	if err := checkReadable(Link{Src: private, Chown: true}, 4321, 4321); err != nil {
		t.Errorf("chowned: %v", err)
	}
	if err := checkReadable(Link{Src: filepath.Join(dir, "missing")}, 1, 1); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("missing: %v", err)
	}
}

// A jailed Firecracker is recognised by its jail socket and --id, as
// jailer execs it; another VM's jailed Firecracker is not.
func TestCmdlineMatchesJail(t *testing.T) {
	dir := t.TempDir()
	j := JailFor("/var/lib/kiln/jail", "/usr/bin/firecracker", "web-1")
	sock := filepath.Join(dir, APISocketName)
	if err := os.Symlink(j.Host.API, sock); err != nil {
		t.Fatal(err)
	}
	jailed := []byte("/firecracker\x00--id=web-1\x00--start-time-us=1\x00--start-time-cpu-us=2\x00--api-sock\x00/firecracker.socket\x00")
	other := []byte("/firecracker\x00--id=web-2\x00--api-sock\x00/firecracker.socket\x00")
	direct := []byte("firecracker\x00--api-sock\x00" + sock + "\x00--id\x00web-1\x00")
	if !cmdlineMatches(jailed, sock) || cmdlineMatches(other, sock) || !cmdlineMatches(direct, sock) {
		t.Errorf("jailed %v, other %v, direct %v", cmdlineMatches(jailed, sock), cmdlineMatches(other, sock), cmdlineMatches(direct, sock))
	}
	plain := filepath.Join(dir, "plain.sock")
	if cmdlineMatches(jailed, plain) {
		t.Error("a jailed cmdline matched a socket that is no link into a jail")
	}
}

// A jail's cgroup is removed even when the VMM's last process leaves it a
// moment after the VMM is reported gone.
func TestRemoveJailWaitsForBusyCgroup(t *testing.T) {
	testutil.RequireRoot(t)
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil || Cgroup2Mount(mounts) == "" {
		t.Skip("no cgroup2 mount")
	}
	j := JailFor(t.TempDir(), "/x/firecracker-kiln-test", "busy-"+strconv.Itoa(os.Getpid()))
	parent := filepath.Join(Cgroup2Mount(mounts), filepath.Dir(j.Cgroup))
	cg := filepath.Join(Cgroup2Mount(mounts), j.Cgroup)
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Rmdir(cg); syscall.Rmdir(parent) })
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := removeJail(j); err == nil || !strings.Contains(err.Error(), "remove cgroup") {
		t.Fatalf("removeJail with a live process in the cgroup = %v, want it reported", err)
	}
	cmd.Process.Kill()
	if err := removeJail(j); err != nil {
		t.Fatalf("removeJail once the process is going: %v", err)
	}
	if _, err := os.Stat(cg); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup %s left: %v", cg, err)
	}
}
