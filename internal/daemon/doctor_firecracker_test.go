package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/config"
	"github.com/kilnvm/kiln/internal/system"
	"github.com/kilnvm/kiln/internal/vmm/firecracker"
)

// fakeJailer writes a shell script that prints out for --version.
func fakeJailer(t *testing.T, dir, out string) string {
	t.Helper()
	p := filepath.Join(dir, "jailer")
	if err := os.WriteFile(p, []byte("#!/bin/sh\nprintf '%s\\n' '"+out+"'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestJailerChecks(t *testing.T) {
	dir := t.TempDir()
	tested, _ := firecracker.TestedRange()
	good := fakeJailer(t, dir, "Jailer v"+tested.String())
	mk := func(sub, out string) string {
		d := filepath.Join(dir, sub)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return fakeJailer(t, d, out)
	}
	old := mk("old", "Jailer v1.4.0")
	untested := mk("untested", "Jailer v1.12.0")
	garbage := mk("garbage", "hello")
	failing := filepath.Join(dir, "failing")
	if err := os.WriteFile(failing, []byte("#!/bin/sh\necho boom >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cg := filepath.Join(dir, "cg")
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(cg, "cgroup.controllers"), "cpuset cpu io memory pids\n")
	v2 := filepath.Join(dir, "mounts-v2")
	write(v2, "proc /proc proc rw 0 0\ncgroup2 "+cg+" cgroup2 rw,nosuid 0 0\n")
	v1 := filepath.Join(dir, "mounts-v1")
	write(v1, "proc /proc proc rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n")

	host := func(mountTable string, onPath bool) jailerHost {
		h := hostJailerView(system.ExecRunner{})
		h.mounts = mountTable
		h.userName = func(uid int) (string, error) {
			if uid == 1500 {
				return "kiln-fc", nil
			}
			return "", errors.New("unknown user")
		}
		base := h.lookPath
		h.lookPath = func(name string) (string, error) {
			if name == "jailer" {
				if onPath {
					return "/usr/local/bin/jailer", nil
				}
				return "", errors.New("not found")
			}
			return base(name)
		}
		return h
	}
	baseCfg := func(bin string) config.Config {
		c := config.Default()
		c.StateDir = filepath.Join(dir, "state")
		c.JailerBinary, c.JailerUID, c.JailerGID = bin, 1500, 1500
		return c
	}
	fcOK := tested
	noFC := errors.New("firecracker not found")

	type want struct{ name, status, has string }
	for _, tc := range []struct {
		name  string
		cfg   config.Config
		host  jailerHost
		fc    firecracker.Release
		fcErr error
		want  []want
		count int
	}{
		{name: "unset, jailer on PATH", cfg: config.Default(), host: host(v2, true), fc: fcOK,
			want: []want{{"jailer", "info", "jailer found at /usr/local/bin/jailer"}, {"jailer", "info", "jailer_uid"}}, count: 1},
		{name: "unset, no jailer", cfg: config.Default(), host: host(v2, false), fcErr: noFC,
			want: []want{{"jailer", "info", "no jailer on PATH"}, {"jailer", "info", "runs directly as root"}}, count: 1},
		{name: "all good", cfg: baseCfg(good), host: host(v2, false), fc: fcOK, count: 4,
			want: []want{{"jailer", "pass", "same release as Firecracker"}, {"jailer user", "pass", "uid 1500 (kiln-fc)"},
				{"jailer chroot", "pass", "is on the filesystem of"}, {"jailer cgroup", "pass", "cgroup2 mounted at " + cg}}},
		{name: "missing binary", cfg: baseCfg(filepath.Join(dir, "nope")), host: host(v2, false), fc: fcOK,
			want: []want{{"jailer", "fail", "not found"}}},
		{name: "bad version output", cfg: baseCfg(garbage), host: host(v2, false), fc: fcOK,
			want: []want{{"jailer", "fail", `unrecognised jailer --version output "hello"`}}},
		{name: "version fails", cfg: baseCfg(failing), host: host(v2, false), fc: fcOK,
			want: []want{{"jailer", "fail", "boom"}}},
		{name: "too old", cfg: baseCfg(old), host: host(v2, false), fc: firecracker.Release{Major: 1, Minor: 4},
			want: []want{{"jailer", "fail", "older than the minimum"}}},
		{name: "untested but matching", cfg: baseCfg(untested), host: host(v2, false), fc: firecracker.Release{Major: 1, Minor: 12},
			want: []want{{"jailer", "warn", "outside the tested range; same release as Firecracker"}}},
		{name: "differs from firecracker", cfg: baseCfg(good), host: host(v2, false), fc: firecracker.Release{Major: 1, Minor: 12},
			want: []want{{"jailer", "warn", "Firecracker is 1.12.0: jailer and Firecracker must come from the same release"}}},
		{name: "firecracker unknown", cfg: baseCfg(good), host: host(v2, false), fcErr: noFC,
			want: []want{{"jailer", "pass", "cannot be compared"}}},
		{name: "root uid", cfg: func() config.Config { c := baseCfg(good); c.JailerUID = 0; return c }(), host: host(v2, false), fc: fcOK,
			want: []want{{"jailer user", "fail", "must not run as root"}}},
		{name: "uid without passwd entry", cfg: func() config.Config { c := baseCfg(good); c.JailerUID = 4242; return c }(), host: host(v2, false), fc: fcOK,
			want: []want{{"jailer user", "pass", "uid 4242 (no passwd entry"}}},
		{name: "chroot base on another filesystem", cfg: func() config.Config { c := baseCfg(good); c.JailerChrootBase = "/proc/kiln-jail"; return c }(),
			host: host(v2, false), fc: fcOK,
			want: []want{{"jailer chroot", "fail", "another filesystem"}}},
		{name: "no cgroup2", cfg: baseCfg(good), host: host(v1, false), fc: fcOK,
			want: []want{{"jailer cgroup", "fail", "no cgroup2 filesystem is mounted"}}},
		{name: "unreadable mount table", cfg: baseCfg(good), host: host(filepath.Join(dir, "no-mounts"), false), fc: fcOK,
			want: []want{{"jailer cgroup", "fail", "read the mount table"}}},
		{name: "cgroup controllers present", cfg: func() config.Config {
			c := baseCfg(good)
			c.JailerCgroups = []string{"cpu.max=50000 100000", "memory.max=1073741824"}
			return c
		}(), host: host(v2, false), fc: fcOK,
			want: []want{{"jailer cgroup", "pass", "cgroup2 mounted"}}},
		{name: "cgroup controller missing", cfg: func() config.Config {
			c := baseCfg(good)
			c.JailerCgroups = []string{"cpu.max=50000 100000", "hugetlb.2MB.max=0", "cpu.weight=50"}
			return c
		}(), host: host(v2, false), fc: fcOK,
			want: []want{{"jailer cgroup", "fail", "controller(s) hugetlb for jailer_cgroups"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checks := jailerChecks(context.Background(), tc.cfg, tc.host, tc.fc, tc.fcErr)
			if tc.count > 0 && len(checks) != tc.count {
				t.Errorf("%d checks, want %d: %+v", len(checks), tc.count, checks)
			}
			byName := map[string]api.Check{}
			for _, c := range checks {
				byName[c.Name] = c
				if (c.Status == "warn" || c.Status == "fail") && c.Fix == "" {
					t.Errorf("%s is %s with no fix: %s", c.Name, c.Status, c.Detail)
				}
			}
			for _, w := range tc.want {
				c, ok := byName[w.name]
				if !ok {
					t.Fatalf("no %q check in %+v", w.name, checks)
				}
				if c.Status != w.status || !strings.Contains(c.Detail, w.has) {
					t.Errorf("%s = %s %q; want %s containing %q", w.name, c.Status, c.Detail, w.status, w.has)
				}
			}
		})
	}
}

func TestParseJailerVersion(t *testing.T) {
	r, err := parseJailerVersion("Jailer v1.16.1\n")
	if err != nil || r != (firecracker.Release{Major: 1, Minor: 16, Patch: 1}) {
		t.Errorf("got %v, %v", r, err)
	}
	if _, err := parseJailerVersion("Firecracker v1.16.1\n"); err == nil {
		t.Error("firecracker's version line parsed as a jailer's")
	}
}
