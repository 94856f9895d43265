package reaper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The tests here run a Reaper in-process, one test at a time. Nothing
// else may wait for children while one runs (exec.Cmd.Wait would lose the
// race to it), so TestReapsOrphansAsSubreaper, which uses exec.Cmd, runs
// when no reaper is running in this process.

func sh(t *testing.T, r *Reaper, script string) *Process {
	t.Helper()
	p, err := r.Start("/bin/sh", []string{"sh", "-c", script}, &os.ProcAttr{
		Files: []*os.File{nil, os.Stderr, os.Stderr},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestExitStatusesReachTheirWaiters(t *testing.T) {
	r := New(nil)
	defer r.Close()
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			// Half exit at once (before Start has even returned, often).
			script := fmt.Sprintf("exit %d", i)
			if i%2 == 1 {
				script = fmt.Sprintf("sleep 0.0%d; exit %d", i%10, i)
			}
			ws, err := sh(t, r, script).Wait(ctx(t))
			if err != nil || !ws.Exited() || ws.ExitStatus() != i {
				t.Errorf("command %d: status %v err %v", i, ws, err)
			}
		})
	}
	wg.Wait()
}

func TestSignals(t *testing.T) {
	r := New(nil)
	defer r.Close()
	p := sh(t, r, "sleep 300")
	if err := p.Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ws, err := p.Wait(ctx(t))
	if err != nil || !ws.Signaled() || ws.Signal() != unix.SIGTERM {
		t.Errorf("status %v err %v, want killed by SIGTERM", ws, err)
	}
	if err := p.Signal(unix.SIGTERM); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("signal after exit: %v", err)
	}

	// The group signal reaches the shell's child too.
	g := sh(t, r, "sleep 300 & wait")
	if err := g.SignalGroup(unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if ws, err := g.Wait(ctx(t)); err != nil || !ws.Signaled() {
		t.Errorf("group: status %v err %v", ws, err)
	}
	if err := g.SignalGroup(unix.SIGKILL); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("group signal after exit: %v", err)
	}
}

func TestWaitHonoursContextAndClose(t *testing.T) {
	r := New(nil)
	p := sh(t, r, "sleep 300")
	c, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := p.Wait(c); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("wait with deadline: %v", err)
	}
	r.Close()
	if _, err := p.Wait(ctx(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("wait after close: %v", err)
	}
	if _, err := r.Start("/bin/true", []string{"true"}, &os.ProcAttr{}); !errors.Is(err, ErrClosed) {
		t.Errorf("start after close: %v", err)
	}
	// Nobody reaps it any more: kill and collect it ourselves.
	unix.Kill(-p.Pid, unix.SIGKILL)
	var ws unix.WaitStatus
	unix.Wait4(p.Pid, &ws, 0, nil)
}

func TestStartFailure(t *testing.T) {
	r := New(nil)
	defer r.Close()
	if _, err := r.Start("/nonexistent/prog", []string{"prog"}, &os.ProcAttr{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("start of a missing program: %v", err)
	}
}

// TestReapsOrphansAsSubreaper runs the reaper in a child process that is a
// child subreaper (as PID 1 is): orphaned grandchildren are re-parented to
// it and must be reaped, while exec waiters still get their own statuses.
func TestReapsOrphansAsSubreaper(t *testing.T) {
	if os.Getenv("KILN_REAPER_HELPER") == "1" {
		subreaperHelper()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReapsOrphansAsSubreaper$", "-test.v")
	cmd.Env = append(os.Environ(), "KILN_REAPER_HELPER=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "HELPER OK") {
		t.Fatalf("helper did not finish:\n%s", out)
	}
}

func subreaperHelper() {
	fail := func(format string, args ...any) {
		fmt.Printf("HELPER FAIL: "+format+"\n", args...)
		os.Exit(1)
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fail("prctl: %v", err)
	}
	r := New(nil)
	defer r.Close()
	const n = 5
	var orphanPids []int
	for i := range n {
		rd, wr, err := os.Pipe()
		if err != nil {
			fail("pipe: %v", err)
		}
		// The shell leaves a child behind and exits with its own code.
		p, err := r.Start("/bin/sh", []string{"sh", "-c", fmt.Sprintf("sleep 0.2 & echo $!; exit %d", 10+i)},
			&os.ProcAttr{Files: []*os.File{nil, wr, os.Stderr}})
		wr.Close()
		if err != nil {
			fail("start: %v", err)
		}
		buf := make([]byte, 32)
		k, _ := rd.Read(buf)
		rd.Close()
		pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:k])))
		if err != nil {
			fail("orphan pid %q: %v", buf[:k], err)
		}
		orphanPids = append(orphanPids, pid)
		c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		ws, err := p.Wait(c)
		cancel()
		if err != nil || ws.ExitStatus() != 10+i {
			fail("exec waiter %d got %v %v", i, ws, err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for r.Orphans() < n {
		if time.Now().After(deadline) {
			fail("only %d of %d orphans reaped", r.Orphans(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, pid := range orphanPids {
		// Reaped means gone, not a zombie.
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); strings.Contains(string(b), ") Z ") {
				fail("orphan %d is a zombie", pid)
			}
		}
	}
	fmt.Println("HELPER OK")
}
