package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/api"
)

// follower is a running `kiln vm logs -f` whose stdout the test watches.
type follower struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    bytes.Buffer
	stderr bytes.Buffer
	done   chan struct{}
	code   int
}

func (f *follower) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.out.Write(p)
}

func (f *follower) stdout() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.out.String()
}

// startFollower runs `kiln vm logs -f ARGS...`; the test's cleanup kills it
// if it still runs.
func (h *harness) startFollower(t *testing.T, args ...string) *follower {
	t.Helper()
	f := &follower{done: make(chan struct{})}
	f.cmd = exec.Command(filepath.Join(h.bin, "kiln"), append([]string{"--config", h.config, "vm", "logs", "-f"}, args...)...)
	f.cmd.Env = h.env
	f.cmd.Stdout = f
	f.cmd.Stderr = &f.stderr // read only after done
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(f.done)
		_ = f.cmd.Wait()
		f.code = f.cmd.ProcessState.ExitCode()
	}()
	t.Cleanup(func() {
		select {
		case <-f.done:
		default:
			_ = f.cmd.Process.Kill()
			<-f.done
		}
	})
	return f
}

// waitOutput waits until the follower has printed want.
func (f *follower) waitOutput(t *testing.T, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !strings.Contains(f.stdout(), want) {
		select {
		case <-f.done:
			t.Fatalf("follower exited %d before printing %q\nstdout:\n%s\nstderr:\n%s", f.code, want, f.stdout(), f.stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("follower did not print %q within %s\nstdout:\n%s", want, within, f.stdout())
		}
	}
}

// waitExit waits for the follower to exit and returns its code.
func (f *follower) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-f.done:
		return f.code
	case <-time.After(within):
		t.Fatalf("follower still runs after %s\nstdout:\n%s", within, f.stdout())
		return -1
	}
}

// TestLogsFollow follows a VM's console: guest writes to /dev/console
// appear while the follower runs, following survives a stop/start, Ctrl-C
// ends it with 0, and deleting the VM ends it with not_found.
func TestLogsFollow(t *testing.T) {
	h := setup(t)
	h.createVM(t, "logf")
	f := h.startFollower(t, "logf")
	f.waitOutput(t, "kiln-agent", 30*time.Second) // what was there: the boot lines

	mark := fmt.Sprintf("MARK-%d", time.Now().UnixNano())
	h.mustKiln(t, "vm", "exec", "logf", "--", "sh", "-c", "echo "+mark+" > /dev/console")
	f.waitOutput(t, mark, 30*time.Second)

	// A new boot rewrites the console log; the follower goes on with it.
	h.mustKiln(t, "vm", "stop", "logf")
	h.mustKiln(t, "vm", "start", "logf")
	mark2 := mark + "-after-restart"
	h.mustKiln(t, "vm", "exec", "logf", "--", "sh", "-c", "echo "+mark2+" > /dev/console")
	f.waitOutput(t, mark2, 30*time.Second)

	if err := f.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := f.waitExit(t, 10*time.Second); code != 0 {
		t.Fatalf("follower exited %d after SIGINT, want 0\nstderr:\n%s", code, f.stderr.String())
	}

	// --tail 0: only new output; then the VM goes away under the follower.
	g := h.startFollower(t, "--tail", "0", "logf")
	mark3 := mark + "-tail0"
	h.mustKiln(t, "vm", "exec", "logf", "--", "sh", "-c", "echo "+mark3+" > /dev/console")
	g.waitOutput(t, mark3, 30*time.Second)
	if strings.Contains(g.stdout(), "kiln-agent") {
		t.Errorf("--tail 0 printed old boot lines:\n%s", g.stdout())
	}
	// Without -f, --tail N prints the log's last N lines and exits.
	// (The tail is read first: the full log read after it can only be longer.)
	last := h.mustKiln(t, "vm", "logs", "--tail", "2", "logf").stdout
	full := h.mustKiln(t, "vm", "logs", "logf").stdout
	if strings.Count(last, "\n") != 2 || len(last) >= len(full) || !strings.Contains(full, last) || !strings.Contains(full, mark3) {
		t.Errorf("vm logs --tail 2 = %q; not the last two lines of a log of %d bytes", last, len(full))
	}
	h.mustKiln(t, "vm", "delete", "logf")
	code := g.waitExit(t, 30*time.Second)
	if code != api.ClassNotFound.ExitCode() || !strings.Contains(g.stderr.String(), "was deleted") {
		t.Fatalf("follower after delete: exit %d, stderr %q; want %d and \"was deleted\"", code, g.stderr.String(), api.ClassNotFound.ExitCode())
	}
}

func TestLogsFollowUnknownVM(t *testing.T) {
	h := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(h.bin, "kiln"), "--config", h.config, "vm", "logs", "-f", "no-such-vm")
	cmd.Env = h.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != api.ClassNotFound.ExitCode() || !strings.Contains(stderr.String(), "not_found") {
		t.Fatalf("vm logs -f on an unknown VM: %v, stderr %q; want exit %d with not_found", err, stderr.String(), api.ClassNotFound.ExitCode())
	}
	if r := h.kiln(t, "vm", "logs", "--tail", "-5", "no-such-vm"); r.code != api.ClassBadRequest.ExitCode() {
		t.Fatalf("a negative --tail must be refused: %s", r)
	}
}
