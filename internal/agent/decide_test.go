package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/api"
)

// fsEntry builds a root: "file" (executable), "link:TARGET", "dir".
func buildRoot(t *testing.T, entries map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, kind := range entries {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case kind == "file":
			err = os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755)
		case kind == "plain":
			err = os.WriteFile(p, nil, 0o644)
		case kind == "dir":
			err = os.MkdirAll(p, 0o755)
		case strings.HasPrefix(kind, "link:"):
			err = os.Symlink(strings.TrimPrefix(kind, "link:"), p)
		default:
			t.Fatalf("bad kind %q", kind)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestDecideInit(t *testing.T) {
	unit := strings.TrimPrefix(proto.SystemdUnitPath, "/")
	// Debian with usrmerge: /sbin -> usr/sbin, /usr/sbin/init ->
	// ../lib/systemd/systemd, /lib -> usr/lib.
	debian := map[string]string{
		"sbin": "link:usr/sbin", "lib": "link:usr/lib",
		"usr/sbin/init": "link:../lib/systemd/systemd", "usr/lib/systemd/systemd": "file",
	}
	withUnit := func(m map[string]string) map[string]string {
		out := map[string]string{unit: "plain"}
		for k, v := range m {
			out[k] = v
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		mode     string
		root     map[string]string
		want     string
		wantInit string
	}{
		{"debian systemd with unit", proto.InitAuto, withUnit(debian), proto.InitImage, "/usr/lib/systemd/systemd"},
		{"empty mode is auto", "", withUnit(debian), proto.InitImage, "/usr/lib/systemd/systemd"},
		{"systemd without unit", proto.InitAuto, debian, proto.InitAgent, "/usr/lib/systemd/systemd"},
		{"absolute link stays inside root", proto.InitAuto, withUnit(map[string]string{
			"sbin/init": "link:/lib/systemd/systemd", "lib/systemd/systemd": "file"}), proto.InitImage, "/lib/systemd/systemd"},
		{"busybox init", proto.InitAuto, withUnit(map[string]string{
			"sbin/init": "link:../bin/busybox", "bin/busybox": "file"}), proto.InitAgent, "/bin/busybox"},
		{"no init", proto.InitAuto, map[string]string{"etc": "dir"}, proto.InitAgent, ""},
		{"dangling link", proto.InitAuto, withUnit(map[string]string{"sbin/init": "link:/lib/systemd/systemd"}), proto.InitAgent, ""},
		{"not executable", proto.InitAuto, withUnit(map[string]string{"sbin/init": "link:/lib/systemd/systemd", "lib/systemd/systemd": "plain"}), proto.InitAgent, ""},
		{"link loop", proto.InitAuto, withUnit(map[string]string{"sbin/init": "link:loop", "sbin/loop": "link:init"}), proto.InitAgent, ""},
		{"escape with .. is clamped", proto.InitAuto, withUnit(map[string]string{
			"sbin/init": "link:../../../../../lib/systemd/systemd", "lib/systemd/systemd": "file"}), proto.InitImage, "/lib/systemd/systemd"},
		{"agent forced", proto.InitAgent, withUnit(debian), proto.InitAgent, "/usr/lib/systemd/systemd"},
		{"image forced on busybox", proto.InitImage, map[string]string{"sbin/init": "file"}, proto.InitImage, "/sbin/init"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := buildRoot(t, tc.root)
			d, err := DecideInit(tc.mode, root)
			if err != nil {
				t.Fatal(err)
			}
			if d.Mode != tc.want || d.Init != tc.wantInit || d.Reason == "" {
				t.Errorf("got %+v, want mode %q init %q", d, tc.want, tc.wantInit)
			}
		})
	}
}

func TestDecideInitErrors(t *testing.T) {
	root := buildRoot(t, map[string]string{"etc": "dir"})
	if _, err := DecideInit(proto.InitImage, root); err == nil || !strings.Contains(err.Error(), "/sbin/init") {
		t.Errorf("image mode without init: %v", err)
	}
	if _, err := DecideInit("upstart", root); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("unknown mode: %v", err)
	}
}

func TestResolveInDoesNotLeaveRoot(t *testing.T) {
	// /sbin/init -> /bin/sh exists on the host, but not in this root.
	root := buildRoot(t, map[string]string{"sbin/init": "link:/bin/sh"})
	if got, err := ResolveIn(root, "/sbin/init"); err == nil {
		t.Errorf("resolved to %q through the host's /bin/sh", got)
	}
}
