// Package reaper is the one place where the guest agent waits for child
// processes.
//
// When the agent is PID 1 every orphan in the guest is re-parented to it and
// must be reaped, which means calling wait4(-1). A plain wait4(-1) loop would
// also steal the exit statuses that exec handlers wait for (os/exec's
// Cmd.Wait then fails with ECHILD). So every command the agent runs is
// started through a Reaper, which reaps everything with wait4(-1) and hands
// each status to the goroutine that registered that pid. Registration happens
// under the same lock as reaping, so a child that exits at once can never be
// reaped before its waiter exists.
//
// There must be at most one Reaper per process, and nothing else in the
// process may wait for children while it runs.
package reaper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrClosed is returned by Start after Close, and by Wait for a process that
// was still running when the reaper was closed.
var ErrClosed = errors.New("reaper closed")

// Reaper reaps all children of the process and delivers exit statuses to the
// processes it started.
type Reaper struct {
	logger *slog.Logger
	sigs   chan os.Signal
	stop   chan struct{}
	done   chan struct{}

	mu sync.Mutex // held across start+register and across each reaping sweep
	// guarded by mu
	waiters map[int]*Process
	orphans int
	closed  bool
}

// New starts a reaper. Close it to stop reaping.
func New(logger *slog.Logger) *Reaper {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Reaper{
		logger:  logger,
		sigs:    make(chan os.Signal, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		waiters: make(map[int]*Process),
	}
	signal.Notify(r.sigs, unix.SIGCHLD)
	go r.loop()
	return r
}

func (r *Reaper) loop() {
	defer close(r.done)
	// Children (or orphans) may have exited before Notify took effect.
	r.sweep()
	for {
		select {
		case <-r.stop:
			return
		case <-r.sigs:
			// SIGCHLD coalesces: one signal may stand for many exits, so
			// sweep until nothing is left.
			r.sweep()
		}
	}
}

func (r *Reaper) sweep() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return // ECHILD: no children; 0: none has exited
		}
		p, ok := r.waiters[pid]
		if !ok {
			r.orphans++
			r.logger.Debug("reaped orphan", "pid", pid, "status", describe(ws))
			continue
		}
		delete(r.waiters, pid)
		p.status = ws
		close(p.exited)
		// The process is gone; free its pidfd.
		p.proc.Release()
	}
}

// Close stops reaping. Processes still running are not touched; their Wait
// returns ErrClosed.
func (r *Reaper) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	signal.Stop(r.sigs)
	close(r.stop)
	<-r.done
	return nil
}

// Orphans is the number of processes reaped that nobody started through
// this reaper (re-parented orphans).
func (r *Reaper) Orphans() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.orphans
}

// Start starts a process like os.StartProcess and registers it, so its exit
// status reaches Process.Wait. Never call Wait on the returned os-level
// process yourself.
func (r *Reaper) Start(name string, argv []string, attr *os.ProcAttr) (*Process, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, fmt.Errorf("start %s: %w", name, ErrClosed)
	}
	proc, err := os.StartProcess(name, argv, attr)
	if err != nil {
		return nil, err
	}
	p := &Process{Pid: proc.Pid, proc: proc, exited: make(chan struct{}), reaper: r}
	r.waiters[p.Pid] = p
	return p, nil
}

// Process is a child started through a Reaper.
type Process struct {
	Pid    int
	proc   *os.Process
	reaper *Reaper
	exited chan struct{}
	status unix.WaitStatus // set before exited is closed
}

// Exited is closed once the process has been reaped.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Wait waits for the process to exit and returns its wait status.
func (p *Process) Wait(ctx context.Context) (unix.WaitStatus, error) {
	select {
	case <-p.exited:
		return p.status, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("wait for pid %d: %w", p.Pid, ctx.Err())
	case <-p.reaper.done:
		// The loop may have reaped it just before stopping.
		select {
		case <-p.exited:
			return p.status, nil
		default:
		}
		return 0, fmt.Errorf("wait for pid %d: %w", p.Pid, ErrClosed)
	}
}

// Signal sends sig to the process itself, through its pidfd, so a recycled
// pid is never signalled. It returns os.ErrProcessDone after the process has
// exited.
func (p *Process) Signal(sig os.Signal) error {
	select {
	case <-p.exited:
		return os.ErrProcessDone
	default:
	}
	return p.proc.Signal(sig)
}

// SignalGroup sends sig to the process group whose id is the process's pid
// (start it with Setpgid or Setsid), so a shell's children get it too. Once
// the leader has exited it returns os.ErrProcessDone and sends nothing: the
// group id could by then belong to an unrelated new group.
func (p *Process) SignalGroup(sig unix.Signal) error {
	// Under the reaper's lock the leader cannot be reaped (and its pid
	// recycled) between the check and the kill.
	p.reaper.mu.Lock()
	defer p.reaper.mu.Unlock()
	select {
	case <-p.exited:
		return os.ErrProcessDone
	default:
	}
	err := unix.Kill(-p.Pid, sig)
	if err == unix.ESRCH {
		return os.ErrProcessDone
	}
	return err
}

func describe(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exit %d", ws.ExitStatus())
	case ws.Signaled():
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("status %#x", uint32(ws))
}
