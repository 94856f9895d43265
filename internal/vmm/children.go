package vmm

import (
	"fmt"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Children starts VMM processes detached from the daemon and reaps the
// ones this process started, so none lingers as a zombie. A VMM started by
// an earlier daemon is not a child: init reaps it. The zero value is ready
// to use; it is safe for concurrent use.
type Children struct {
	mu sync.Mutex // guards m; a leaf
	m  map[int]chan struct{}
}

// Start starts cmd in its own session (no signal aimed at the daemon's
// process group or terminal reaches the VMM) and reaps it in the
// background. The returned channel is closed once the process has exited
// and been reaped; cmd.ProcessState is valid then.
func (c *Children) Start(cmd *exec.Cmd) (<-chan struct{}, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	pid := cmd.Process.Pid
	done := make(chan struct{})
	c.mu.Lock()
	if c.m == nil {
		c.m = map[int]chan struct{}{}
	}
	c.m[pid] = done
	c.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		c.mu.Lock()
		delete(c.m, pid)
		c.mu.Unlock()
		close(done)
	}()
	return done, nil
}

// AwaitReap waits up to timeout for an exited child of ours to be reaped.
// It returns nil at once for a pid this process did not start.
func (c *Children) AwaitReap(pid int, timeout time.Duration) error {
	c.mu.Lock()
	done := c.m[pid]
	c.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("pid %d exited but was not reaped within %s", pid, timeout)
	}
}

// Len is the number of started children not yet reaped.
func (c *Children) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
