package e2e

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/testutil"
)

// TestNoDaemonNonRootSaysHowToStartIt: a caller who is not root must not
// start a daemon, and must be told how to get one.
func TestNoDaemonNonRootSaysHowToStartIt(t *testing.T) {
	h := setup(t)
	testutil.RequireRoot(t) // to switch to an unprivileged user
	sock := filepath.Join(t.TempDir(), "none.sock")
	cmd := exec.Command(filepath.Join(h.bin, "kiln"), "--config", h.config, "--socket", sock, "vm", "list")
	cmd.Env = h.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != api.ClassUnavailable.ExitCode() {
		t.Fatalf("want exit %d, got %v; stderr: %s", api.ClassUnavailable.ExitCode(), err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "not running") || !strings.Contains(stderr.String(), "hint:") {
		t.Fatalf("no explanation or hint: %s", stderr.String())
	}
	if exists(sock) {
		t.Fatal("a non-root caller started a daemon")
	}
}
