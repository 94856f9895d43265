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
	asNobody := func(sock string) (int, string) {
		cmd := exec.Command(filepath.Join(h.bin, "kiln"), "--config", h.config, "--socket", sock, "vm", "list")
		cmd.Env = h.env
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("want a failure, got %v; stderr: %s", err, stderr.String())
		}
		return ee.ExitCode(), stderr.String()
	}

	sock := filepath.Join(h.root, "none.sock")
	code, stderr := asNobody(sock)
	if code != api.ClassUnavailable.ExitCode() || !strings.Contains(stderr, "not running") || !strings.Contains(stderr, "hint:") {
		t.Fatalf("no daemon: exit %d, stderr: %s", code, stderr)
	}
	if exists(sock) {
		t.Fatal("a non-root caller started a daemon")
	}

	// The real socket of the harness is root's (no kiln group here).
	code, stderr = asNobody(filepath.Join(t.TempDir(), "private", "kiln.sock"))
	if code != api.ClassPermissionDenied.ExitCode() || !strings.Contains(stderr, "kiln group") {
		t.Fatalf("no permission: exit %d, stderr: %s", code, stderr)
	}
}
