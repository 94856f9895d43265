package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		code       int
		out, errIn string
	}{
		{[]string{"version"}, 0, "kiln-agent v9", ""},
		{nil, 2, "", "usage:"},
		{[]string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{[]string{"service", "--config", filepath.Join(t.TempDir(), "none.json")}, 1, "", "read vm config"},
		{[]string{"service", "extra"}, 2, "", "unexpected arguments"},
		{[]string{"service", "--bogus"}, 2, "", "flag provided but not defined"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, "v9", &stdout, &stderr)
		if code != tc.code || !strings.Contains(stdout.String(), tc.out) || !strings.Contains(stderr.String(), tc.errIn) {
			t.Errorf("%v: code %d stdout %q stderr %q", tc.args, code, stdout.String(), stderr.String())
		}
	}
	// An invalid config names the file and the field.
	p := filepath.Join(t.TempDir(), "vm.json")
	os.WriteFile(p, []byte(`{"channel":"smoke"}`), 0o600)
	var stderr bytes.Buffer
	if code := run([]string{"service", "--config", p}, "v", &bytes.Buffer{}, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), p) || !strings.Contains(stderr.String(), `channel "smoke"`) {
		t.Errorf("invalid config: code %d stderr %q", code, stderr.String())
	}
}

// TestStaticAndLean checks that the agent builds without cgo and does not
// pull in host-side packages.
func TestStaticAndLean(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent")
	}
	cmd := exec.Command("go", "list", "-deps", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"internal/daemon", "internal/store", "sqlite", "cobra", "internal/cli"} {
			if strings.Contains(dep, banned) {
				t.Errorf("kiln-agent depends on %s", dep)
			}
		}
	}
	bin := filepath.Join(t.TempDir(), "kiln-agent")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 build: %v\n%s", err, out)
	}
	v, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(v), "kiln-agent ") {
		t.Errorf("version: %q %v", v, err)
	}
}
