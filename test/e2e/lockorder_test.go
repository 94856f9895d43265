package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// lockViolations returns the lock-order panics in the shared daemon's log
// (all its runs): the harness starts it with KILN_LOCKCHECK=1, so every
// inversion of internal/daemon's documented lock order panics, whether the
// panic killed the daemon or net/http recovered it in a handler.
func (h *harness) lockViolations() []string {
	b, _ := os.ReadFile(filepath.Join(h.root, "daemon.log"))
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "lockorder: ") {
			out = append(out, line)
		}
	}
	return out
}

// reportLockViolations prints the violations after the suite (TestMain)
// and reports whether there were any, which fails the run.
func (h *harness) reportLockViolations() bool {
	v := h.lockViolations()
	for _, line := range v {
		fmt.Fprintf(os.Stderr, "e2e: daemon lock-order violation: %s\n", line)
	}
	return len(v) > 0
}

// TestLockOrderCheckedInDaemon pins that the e2e daemon checks its lock
// order (so the other tests' VM lifecycles are checked runs) and that no
// violation has been logged so far.
func TestLockOrderCheckedInDaemon(t *testing.T) {
	h := setup(t)
	b, err := os.ReadFile(filepath.Join(h.root, "daemon.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"lockcheck":true`) {
		t.Fatalf("daemon did not start with lock checking on; log:\n%s", h.daemonLog())
	}
	if v := h.lockViolations(); len(v) > 0 {
		t.Fatalf("lock-order violations in the daemon log:\n%s", strings.Join(v, "\n"))
	}
}
