package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
)

// versionJSON runs `kiln version --json` and decodes it.
func versionJSON(t *testing.T, h *harness) (client string, d api.Version) {
	t.Helper()
	r := h.mustKiln(t, "version", "--json")
	var rep struct {
		Client struct{ Version string }
		Daemon *api.Version
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || rep.Daemon == nil {
		t.Fatalf("kiln version --json: %v\n%s", err, r)
	}
	return rep.Client.Version, *rep.Daemon
}

func vmmByName(vs []api.VMMInfo) map[string]api.VMMInfo {
	m := map[string]api.VMMInfo{}
	for _, v := range vs {
		m[v.Name] = v
	}
	return m
}

// TestVersionVMMs checks `kiln version`, GET /v1/version's VMM list and
// doctor's account of them: on the shared daemon (QEMU; Firecracker only
// where a real one is on PATH), then on a daemon whose Firecracker binary
// is a script that only answers --version (the probe needs nothing more),
// then with no daemon at all.
func TestVersionVMMs(t *testing.T) {
	h := setup(t)
	semver := regexp.MustCompile(`^\d+\.\d+\.\d+`)

	cv, v := versionJSON(t, h)
	if cv == "" || cv != v.Version {
		t.Errorf("client %q, daemon %q: want the same build", cv, v.Version)
	}
	vmms := vmmByName(v.VMMs)
	q, fc := vmms["qemu"], vmms["firecracker"]
	if len(v.VMMs) != 2 || q.Name == "" || fc.Name == "" {
		t.Fatalf("vmms = %+v, want qemu and firecracker", v.VMMs)
	}
	if !q.Usable || !semver.MatchString(q.Version) || q.Reason != "" {
		t.Errorf("qemu = %+v, want usable with a version", q)
	}
	if fc.Usable == (fc.Reason != "") {
		t.Errorf("firecracker = %+v: a reason exactly when not usable", fc)
	}
	if d := vmms[v.VMM]; !d.Default || (q.Default && fc.Default) {
		t.Errorf("default vmm %q, list %+v: exactly the default is marked", v.VMM, v.VMMs)
	}

	human := h.mustKiln(t, "version").stdout
	for _, want := range []string{"client: kiln " + cv, "daemon: kiln " + cv, "default vmm " + v.VMM, "VMM", "qemu", "firecracker"} {
		if !strings.Contains(human, want) {
			t.Errorf("kiln version lacks %q:\n%s", want, human)
		}
	}
	if !fc.Usable && !strings.Contains(human, firstLineE2E(fc.Reason)) {
		t.Errorf("kiln version does not say why firecracker is not usable:\n%s", human)
	}

	// Doctor: the daemon line lists the VMMs; on this host it says why
	// Firecracker is not usable and what auto picked.
	var checks []api.Check
	r := h.kiln(t, "doctor", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &checks); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, r)
	}
	byName := map[string]api.Check{}
	for _, c := range checks {
		byName[c.Name] = c
	}
	if d := byName["daemon"].Detail; !strings.Contains(d, "vmms: qemu "+q.Version) {
		t.Errorf("doctor daemon line = %q, want the VMM list", d)
	}
	if vm := byName["vmm"].Detail; !strings.HasPrefix(vm, "auto picked "+v.VMM) {
		t.Errorf("doctor vmm line = %q, want auto picking %s", vm, v.VMM)
	}
	if !fc.Usable {
		if c := byName["firecracker"]; c.Status != "warn" || !strings.Contains(c.Detail, "not usable") {
			t.Errorf("doctor firecracker = %+v, want a warning saying why", c)
		}
	}
	if c := byName["jailer"]; c.Status != "info" || !strings.Contains(c.Detail, "runs directly as root") {
		t.Errorf("doctor jailer = %+v, want the unconfigured info line", c)
	}

	// A daemon with both drivers: firecracker usable, with its version.
	fake := filepath.Join(t.TempDir(), "firecracker")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'Firecracker v1.16.1'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	h.killDaemon(t, syscall.SIGTERM)
	t.Cleanup(func() {
		h.killDaemon(t, syscall.SIGTERM)
		if err := h.startDaemon(nil); err != nil {
			t.Errorf("restart the default daemon: %v", err)
		}
	})
	if err := h.startDaemon([]string{"KILN_VMM=qemu", "KILN_FIRECRACKER_BINARY=" + fake}); err != nil {
		t.Fatal(err)
	}
	_, v2 := versionJSON(t, h)
	m2 := vmmByName(v2.VMMs)
	if f := m2["firecracker"]; !f.Usable || f.Default || f.Version != "1.16.1" || f.Reason != "" {
		t.Errorf("firecracker on a daemon that has it = %+v", f)
	}
	if q := m2["qemu"]; !q.Usable || !q.Default {
		t.Errorf("qemu (configured) = %+v, want the default", q)
	}

	// No daemon: the client version still prints, and the command fails.
	r = h.kiln(t, "--socket", filepath.Join(t.TempDir(), "none.sock"), "version")
	if r.code == 0 || !strings.Contains(r.stdout, "client: kiln "+cv) || strings.Contains(r.stdout, "daemon:") ||
		!strings.Contains(r.stderr, "not running") {
		t.Errorf("version without a daemon: %s", r)
	}
}

func firstLineE2E(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
