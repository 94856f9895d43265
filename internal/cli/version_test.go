package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
)

func TestPrintVersion(t *testing.T) {
	var rep versionReport
	rep.Client.Version = "1.2.3"
	var b bytes.Buffer
	printVersion(&b, rep, "/run/kiln/kiln.sock")
	if got := b.String(); got != "client: kiln 1.2.3\n" {
		t.Errorf("no daemon: %q", got)
	}
	rep.Daemon = &api.Version{Version: "1.2.3", PID: 7, VMM: "qemu", Accel: "tcg", VMMs: []api.VMMInfo{
		{Name: "qemu", Usable: true, Default: true, Version: "7.2.22"},
		{Name: "firecracker", Reason: "firecracker binary not found\nsecond line"},
	}}
	b.Reset()
	printVersion(&b, rep, "/run/kiln/kiln.sock")
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 5 {
		t.Fatalf("want client, daemon, header and 2 VMM lines:\n%s", b.String())
	}
	for i, want := range [][]string{
		{"client: kiln 1.2.3"},
		{"daemon: kiln 1.2.3 (pid 7) on /run/kiln/kiln.sock", "default vmm qemu", "accel tcg"},
		{"VMM", "USABLE", "DEFAULT", "VERSION", "REASON"},
		{"qemu", "yes", "yes", "7.2.22"},
		{"firecracker", "no", "no", "-", "firecracker binary not found"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d %q lacks %q", i, lines[i], w)
			}
		}
	}
	if strings.Contains(b.String(), "second line") {
		t.Errorf("a reason's later lines leak into the table:\n%s", b.String())
	}
}
