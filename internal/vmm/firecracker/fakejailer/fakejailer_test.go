package fakejailer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/testutil"
	"github.com/kilnvm/kiln/internal/vmm/firecracker/fcemu"
)

const nobody = 65534

func TestParse(t *testing.T) {
	dir := t.TempDir()
	fc := filepath.Join(dir, "firecracker")
	other := filepath.Join(dir, "vmm")
	for _, p := range []string{fc, other} {
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	base := []string{"--id", "vm-1", "--exec-file", fc, "--uid", "123", "--gid", "100"}
	with := func(extra ...string) []string { return append(append([]string(nil), base...), extra...) }

	a, err := Parse(with("--chroot-base-dir=/srv/j", "--cgroup-version", "2", "--cgroup", "cpu.max=50000 100000",
		"--cgroup", "memory.max=1073741824", "--resource-limit", "no-file=1024", "--", "--api-sock", "/firecracker.socket"))
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != "vm-1" || a.UID != 123 || a.GID != 100 || a.CgroupVersion != 2 || len(a.Cgroups) != 2 ||
		a.Cgroups[0] != "cpu.max=50000 100000" || strings.Join(a.Extra, " ") != "--api-sock /firecracker.socket" {
		t.Fatalf("parsed %+v", a)
	}
	if a.ChrootDir() != "/srv/j/firecracker/vm-1/root" || a.CgroupDir("/cg") != "/cg/firecracker/vm-1" {
		t.Fatalf("layout: %s %s", a.ChrootDir(), a.CgroupDir("/cg"))
	}
	if d, err := Parse(base); err != nil || d.ChrootBase != "/srv/jailer" || d.CgroupVersion != 1 {
		t.Fatalf("defaults: %+v %v", d, err)
	}

	for _, tc := range []struct {
		name string
		argv []string
		want string
	}{
		{"empty id", []string{"--id", "", "--exec-file", fc, "--uid", "1", "--gid", "1"}, "missing required flag --id"},
		{"bad id", with("--id", "a_b")[2:], "invalid --id"},
		{"long id", append([]string{"--id", strings.Repeat("a", 65)}, base[2:]...), "invalid --id"},
		{"exec name", []string{"--id", "x", "--exec-file", other, "--uid", "1", "--gid", "1"}, `must contain "firecracker"`},
		{"relative exec", []string{"--id", "x", "--exec-file", "firecracker", "--uid", "1", "--gid", "1"}, "not an absolute path"},
		{"missing exec", []string{"--id", "x", "--exec-file", dir + "/no-firecracker", "--uid", "1", "--gid", "1"}, "no such file"},
		{"missing uid", base[:6], "missing required flag --gid"},
		{"uid not a number", []string{"--id", "x", "--exec-file", fc, "--uid", "x", "--gid", "1"}, "--uid \"x\": not a number"},
		{"relative base", with("--chroot-base-dir", "srv"), "--chroot-base-dir \"srv\" is not an absolute path"},
		{"cgroup shape", with("--cgroup-version", "2", "--cgroup", "memory.max"), "want <cgroup_file>=<value>"},
		{"cgroup path", with("--cgroup-version", "2", "--cgroup", "../x.max=1"), "want <cgroup_file>=<value>"},
		{"cgroup v1", with("--cgroup", "cpu.shares=1"), "cgroup v1 is not implemented"},
		{"cgroup version", with("--cgroup-version", "3"), "invalid --cgroup-version 3"},
		{"parent cgroup", with("--parent-cgroup", "../up"), "--parent-cgroup"},
		{"rlimit", with("--resource-limit", "nproc=1"), "invalid --resource-limit"},
		{"unknown flag", with("--bogus", "1"), "unknown flag --bogus"},
		{"daemonize", with("--daemonize"), "--daemonize is not implemented"},
		{"positional", with("extra"), "unexpected argument \"extra\""},
		{"no value", with("--chroot-base-dir"), "--chroot-base-dir needs a value"},
		{"twice", with("--id", "y"), "--id given twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Parse(tc.argv); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse(%q) = %v, want error containing %q", tc.argv, err, tc.want)
			}
		})
	}
}

func TestCgroup2Mount(t *testing.T) {
	hybrid := "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
	if m, err := Cgroup2Mount(hybrid); err != nil || m != "/sys/fs/cgroup/unified" {
		t.Fatalf("hybrid: %q %v", m, err)
	}
	if _, err := Cgroup2Mount("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"); err == nil {
		t.Fatal("v1-only host: want an error")
	}
}

// goBuild builds pkg (a main package of this module) as dir/name.
func goBuild(t *testing.T, pkg, dir, name string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, "github.com/kilnvm/kiln/"+pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// jailerT is one built fake jailer with a chroot base and cleanup.
type jailerT struct {
	bin, base, cg2 string
}

func newJailer(t *testing.T) *jailerT {
	t.Helper()
	testutil.RequireRoot(t)
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	cg2, err := Cgroup2Mount(string(mounts))
	if err != nil {
		t.Skipf("no cgroup2 hierarchy: %v", err)
	}
	// A short base: fcemu's sockets live in the chroot (108-byte limit).
	base, err := os.MkdirTemp("", "fj")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	return &jailerT{bin: goBuild(t, "internal/vmm/firecracker/fakejailer/cmd/fakejailer", t.TempDir(), "jailer"),
		base: base, cg2: cg2}
}

// id is unique per name and test process, so runs do not share cgroups.
func (j *jailerT) id(t *testing.T, name string) string {
	id := fmt.Sprintf("fj-%d-%s", os.Getpid(), name)
	t.Cleanup(func() { j.removeCgroup(t, "firecracker", id) })
	return id
}

// removeCgroup removes <cg2>/<parent>/<id> and the parent if it is empty
// (once the processes in it are gone).
func (j *jailerT) removeCgroup(t *testing.T, parent, id string) {
	dir := filepath.Join(j.cg2, parent, id)
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("remove cgroup %s: %v", dir, err)
	}
	_ = os.Remove(filepath.Join(j.cg2, parent)) // fails while other VMs use it
}

// start runs the jailer with stdout and stderr to files owned by owner
// (jailed fcemu's QEMU reopens its stdout by path, as the jail's uid).
func (j *jailerT) start(t *testing.T, owner int, args ...string) *jailed {
	t.Helper()
	dir := t.TempDir()
	stdout, stderr := filepath.Join(dir, "stdout"), filepath.Join(dir, "stderr")
	var files []*os.File
	for _, p := range []string{stdout, stderr} {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o600)
		if err == nil {
			err = f.Chown(owner, owner)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
	}
	cmd := exec.Command(j.bin, args...)
	cmd.Stdout, cmd.Stderr = files[0], files[1]
	cmd.Env = []string{"KILN_SECRET=leak", "PATH=/usr/bin:/bin"}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	return &jailed{pid: cmd.Process.Pid, done: done, stdout: stdout, stderr: stderr}
}

// jailed is a started jailer.
type jailed struct {
	pid            int
	done           chan struct{} // closed once it has exited
	stdout, stderr string
}

func (p *jailed) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *jailed) stderrText() string {
	b, _ := os.ReadFile(p.stderr)
	return string(b)
}

const probe = `#!/bin/sh
echo "pid=$$"
echo "uid=$(id -u)"
echo "gid=$(id -g)"
echo "groups=$(id -G)"
echo "cwd=$(pwd)"
echo "argv=$0 $*"
echo "env=$(tr '\0' ' ' < /proc/$$/environ)"
echo "rootowner=$(stat -c %u:%g /)"
echo "ls=$(ls / | tr '\n' ' ')"
[ -c /dev/net/tun ] && echo "tun=$(stat -c %t,%T,%u /dev/net/tun)"
[ -c /dev/kvm ] && echo "kvm=$(stat -c %t,%T,%u /dev/kvm)"
echo "cgroup=$(grep '^0::' /proc/$$/cgroup)"
echo "done=1"
`

func TestJailerRunsExecFileInPlace(t *testing.T) {
	j := newJailer(t)
	src := filepath.Join(t.TempDir(), "firecracker")
	if err := os.WriteFile(src, []byte(probe), 0o700); err != nil {
		t.Fatal(err)
	}
	id := j.id(t, "probe")
	p := j.start(t, nobody, "--id", id, "--exec-file", src, "--uid", "65534", "--gid", "65534",
		"--chroot-base-dir", j.base, "--cgroup-version", "2", "--", "--api-sock", "/firecracker.socket")
	got := map[string]string{}
	testutil.WaitFor(t, 20*time.Second, "the probe to finish", func() bool {
		b, _ := os.ReadFile(p.stdout)
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				got[k] = v
			}
		}
		return got["done"] == "1" || p.exited()
	})
	if got["done"] != "1" {
		t.Fatalf("probe did not finish: %v\nstderr: %s", got, p.stderrText())
	}
	argv := strings.Fields(got["argv"])
	want := map[string]string{
		"pid": strconv.Itoa(p.pid), "uid": "65534", "gid": "65534", "groups": "65534", "cwd": "/",
		"env": "", "rootowner": "65534:65534", "tun": "a,c8,65534", "kvm": "a,e8,65534",
		"cgroup": "0::/firecracker/" + id,
	}
	for k, v := range want {
		if strings.TrimSpace(got[k]) != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if len(argv) != 6 || argv[0] != "/firecracker" || argv[1] != "--id="+id ||
		!strings.HasPrefix(argv[2], "--start-time-us=") || !strings.HasPrefix(argv[3], "--start-time-cpu-us=") ||
		argv[4] != "--api-sock" || argv[5] != "/firecracker.socket" {
		t.Errorf("argv = %q", argv)
	}
	for _, a := range argv[2:4] {
		if _, err := strconv.ParseInt(a[strings.Index(a, "=")+1:], 10, 64); err != nil {
			t.Errorf("%s: not a number", a)
		}
	}
	// The chroot on the host: owned by the uid, the exec file copied
	// (0755), and none of the jail's mounts visible.
	root := filepath.Join(j.base, "firecracker", id, "root")
	st, err := os.Stat(root)
	if err != nil || st.Sys().(*syscall.Stat_t).Uid != nobody {
		t.Errorf("chroot %s: %v %+v", root, err, st)
	}
	copied, err := os.ReadFile(filepath.Join(root, "firecracker"))
	if err != nil || string(copied) != probe {
		t.Errorf("exec file not copied: %v", err)
	}
	if st, err := os.Stat(filepath.Join(root, "firecracker")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("copied exec file mode: %v %v", st, err)
	}
	if ents, err := os.ReadDir(filepath.Join(root, "usr")); err != nil || len(ents) != 0 {
		t.Errorf("the jail's /usr mount is visible on the host: %v %v", ents, err)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), root) {
		t.Errorf("the host mount table mentions the chroot")
	}
}

func TestJailerCgroupFile(t *testing.T) {
	j := newJailer(t)
	src := filepath.Join(t.TempDir(), "firecracker")
	if err := os.WriteFile(src, []byte("#!/bin/sh\ncat /proc/$$/cgroup\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A core interface file needs no controller; cgroup.max.depth exists
	// on every cgroup v2 host.
	id := j.id(t, "cgfile")
	p := j.start(t, nobody, "--id", id, "--exec-file", src, "--uid", "65534", "--gid", "65534",
		"--chroot-base-dir", j.base, "--cgroup-version", "2", "--cgroup", "cgroup.max.depth=3")
	testutil.WaitFor(t, 20*time.Second, "the probe to report", func() bool {
		b, _ := os.ReadFile(p.stdout)
		return strings.Contains(string(b), "0::/firecracker/"+id) || p.exited()
	})
	if b, _ := os.ReadFile(p.stdout); !strings.Contains(string(b), "0::/firecracker/"+id) {
		t.Fatalf("probe output %q\nstderr: %s", b, p.stderrText())
	}
	if b, err := os.ReadFile(filepath.Join(j.cg2, "firecracker", id, "cgroup.max.depth")); err != nil || strings.TrimSpace(string(b)) != "3" {
		t.Errorf("cgroup.max.depth = %q %v", b, err)
	}
}

func TestJailerFailures(t *testing.T) {
	j := newJailer(t)
	src := filepath.Join(t.TempDir(), "firecracker")
	other := filepath.Join(filepath.Dir(src), "vmm")
	for _, p := range []string{src, other} {
		if err := os.WriteFile(p, []byte("#!/bin/sh\necho ran\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	controllers, _ := os.ReadFile(filepath.Join(j.cg2, "cgroup.controllers"))
	run := func(t *testing.T, args ...string) string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(j.bin, args...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("jailer %q: %v, want exit code 1\nstdout: %s\nstderr: %s", args, err, &stdout, &stderr)
		}
		if stdout.Len() != 0 {
			t.Errorf("the exec file ran: %s", &stdout)
		}
		return stderr.String()
	}
	common := func(id string) []string {
		return []string{"--id", id, "--uid", "65534", "--gid", "65534", "--chroot-base-dir", j.base, "--cgroup-version", "2"}
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad id", append(common("bad_id"), "--exec-file", src), "invalid --id \"bad_id\""},
		{"exec name", append(common("x1"), "--exec-file", other), `must contain "firecracker"`},
		{"flag twice", append(common("x2"), "--exec-file", src, "--chroot-base-dir", "/b"), "--chroot-base-dir given twice"},
		{"unknown flag", append(common("x3"), "--exec-file", src, "--no-such-flag"), "unknown flag --no-such-flag"},
		{"new pid ns", append(common("x4"), "--exec-file", src, "--new-pid-ns"), "--new-pid-ns is not implemented"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := run(t, tc.args...)
			if !strings.Contains(msg, tc.want) || !strings.HasPrefix(msg, "fakejailer") {
				t.Errorf("stderr = %q, want %q", msg, tc.want)
			}
			if ents, _ := os.ReadDir(j.base); len(ents) != 0 {
				t.Errorf("a rejected run created %v in the chroot base", ents)
			}
			if _, err := os.Stat(filepath.Join(j.cg2, "firecracker", tc.args[1])); err == nil {
				t.Errorf("a rejected run created a cgroup")
			}
		})
	}
	t.Run("relative base alone", func(t *testing.T) {
		msg := run(t, "--id", "x5", "--uid", "1", "--gid", "1", "--exec-file", src, "--chroot-base-dir", "rel")
		if !strings.Contains(msg, `--chroot-base-dir "rel" is not an absolute path`) {
			t.Errorf("stderr = %q", msg)
		}
		if _, err := os.Stat("rel"); err == nil {
			t.Errorf("created ./rel")
		}
	})
	t.Run("controller not available", func(t *testing.T) {
		if strings.Contains(string(controllers), "memory") {
			t.Skip("this host's cgroup2 has the memory controller")
		}
		id := j.id(t, "nocontroller")
		msg := run(t, append(common(id), "--exec-file", src, "--cgroup", "memory.max=1073741824")...)
		if !strings.Contains(msg, `controller "memory" is not available`) {
			t.Errorf("stderr = %q", msg)
		}
		if _, err := os.Stat(filepath.Join(j.cg2, "firecracker", id)); err == nil {
			t.Errorf("created the cgroup although the controller is missing")
		}
	})
	t.Run("no such cgroup file", func(t *testing.T) {
		id := j.id(t, "nofile")
		msg := run(t, append(common(id), "--exec-file", src, "--cgroup", "cgroup.no_such_file=1")...)
		if !strings.Contains(msg, "no such cgroup file "+filepath.Join(j.cg2, "firecracker", id, "cgroup.no_such_file")) {
			t.Errorf("stderr = %q", msg)
		}
	})
}

// TestFcemuInJail runs the Firecracker API emulator through the fake
// jailer as nobody and asks it for its version from the host.
func TestFcemuInJail(t *testing.T) {
	j := newJailer(t)
	fc := goBuild(t, "internal/vmm/firecracker/fcemu/cmd/fcemu", t.TempDir(), "firecracker")
	id := j.id(t, "version")
	p := j.start(t, nobody, "--id", id, "--exec-file", fc, "--uid", "65534", "--gid", "65534",
		"--chroot-base-dir", j.base, "--cgroup-version", "2", "--", "--api-sock", "/firecracker.socket")
	root := filepath.Join(j.base, "firecracker", id, "root")
	sock := filepath.Join(root, "firecracker.socket")
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	var version string
	testutil.WaitFor(t, 20*time.Second, "fcemu to answer on "+sock, func() bool {
		resp, err := hc.Get("http://localhost/version")
		if err != nil {
			return p.exited()
		}
		defer resp.Body.Close()
		var v struct {
			Version string `json:"firecracker_version"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&v)
		version = v.Version
		return true
	})
	if version != fcemu.SpecVersion {
		t.Fatalf("version = %q, want %q\nstderr: %s", version, fcemu.SpecVersion, p.stderrText())
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil || !strings.Contains(string(status), "\nUid:\t65534\t65534\t65534\t65534\n") {
		t.Errorf("the started pid is not fcemu as nobody: %v\n%s", err, status)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.pid))
	if !strings.HasPrefix(string(cmdline), "/firecracker\x00--id="+id+"\x00") {
		t.Errorf("cmdline = %q", cmdline)
	}
	if st, err := os.Stat(sock); err != nil || st.Sys().(*syscall.Stat_t).Uid != nobody {
		t.Errorf("API socket not created by nobody: %v", err)
	}
}

// TestFcemuInJailQEMUFails runs a jailed fcemu whose QEMU exits at once
// (/bin/false stands in for it): InstanceStart fails saying so, and fcemu
// still stops on SIGTERM.
func TestFcemuInJailQEMUFails(t *testing.T) {
	j := newJailer(t)
	testutil.RequireCommand(t, "qemu-system-x86_64")
	fc := goBuild(t, "internal/vmm/firecracker/fcemu/cmd/fcemu", t.TempDir(), "firecracker")
	id := j.id(t, "console")
	// As the driver does: the chroot made beforehand (0700), the kernel in it.
	root := filepath.Join(j.base, "firecracker", id, "root")
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "vmlinux"), []byte("\x7fELF not really a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := j.start(t, 0, "--id", id, "--exec-file", fc, "--uid", "65534", "--gid", "65534",
		"--chroot-base-dir", j.base, "--cgroup-version", "2", "--", "--api-sock", "/firecracker.socket", "--qemu", "/bin/false")
	sock := filepath.Join(root, "firecracker.socket")
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	put := func(path, body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPut, "http://localhost"+path, strings.NewReader(body))
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String()
	}
	testutil.WaitFor(t, 20*time.Second, "fcemu's API socket", func() bool {
		_, err := os.Stat(sock)
		return err == nil || p.exited()
	})
	if code, body := put("/boot-source", `{"kernel_image_path":"/vmlinux","boot_args":"console=ttyS0"}`); code != http.StatusNoContent {
		t.Fatalf("boot-source: %d %s\nstderr: %s", code, body, p.stderrText())
	}
	code, body := put("/actions", `{"action_type":"InstanceStart"}`)
	if code != http.StatusBadRequest || !strings.Contains(body, "qemu exited at start") {
		t.Fatalf("InstanceStart: %d %s", code, body)
	}
	if err := syscall.Kill(p.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("fcemu ignored SIGTERM after a failed InstanceStart")
	}
}
