package vmm

import (
	"golang.org/x/sys/unix"
	"os/exec"
	"testing"
	"time"
)

func TestChildrenStartDetachesAndReaps(t *testing.T) {
	var c Children
	cmd := exec.Command("sh", "-c", "exit 3")
	done, err := c.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("child not reaped")
	}
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 3 {
		t.Fatalf("exit state %v", cmd.ProcessState)
	}
	if err := c.AwaitReap(cmd.Process.Pid, time.Second); err != nil {
		t.Fatalf("reaped child: %v", err)
	}
	if c.Len() != 0 {
		t.Fatalf("%d children after the only one was reaped", c.Len())
	}
	if err := c.AwaitReap(1, time.Millisecond); err != nil {
		t.Fatalf("a pid we did not start: %v", err)
	}

	sleeper := exec.Command("sleep", "30")
	done, err = c.Start(sleeper)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sleeper.Process.Kill(); <-done }()
	sid, err := unix.Getsid(sleeper.Process.Pid)
	if err != nil || sid != sleeper.Process.Pid {
		t.Fatalf("child not in its own session: sid %d, err %v", sid, err)
	}
	if err := c.AwaitReap(sleeper.Process.Pid, 20*time.Millisecond); err == nil {
		t.Fatal("a running child reported as reaped")
	}
	if _, err := c.Start(exec.Command("/nonexistent/binary")); err == nil {
		t.Fatal("starting a missing binary succeeded")
	}
}

func TestParseProcStat(t *testing.T) {
	line := "4242 (qemu (x) sys) S 1 4242 4242 0 -1 4194560 1 0 0 0 5 3 0 0 20 0 3 0 987654 1000 100 18446744073709551615\n"
	st, err := ParseProcStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if st.State != 'S' || st.StartTicks != 987654 || !st.Running() {
		t.Errorf("got %+v, want state S ticks 987654", st)
	}
	for _, bad := range []string{"", "4242 qemu S 1", "4242 (q) S 1 2 3"} {
		if _, err := ParseProcStat([]byte(bad)); err == nil {
			t.Errorf("ParseProcStat(%q) succeeded", bad)
		}
	}
}
