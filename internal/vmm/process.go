package vmm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// ProcStat is what drivers read from /proc/PID/stat.
type ProcStat struct {
	State      byte   // field 3: R, S, D, Z, X, ...
	StartTicks uint64 // field 22: start time in clock ticks after boot
}

// Running reports whether the process still runs (it is not a zombie).
func (s ProcStat) Running() bool { return s.State != 'Z' && s.State != 'X' }

// ReadProcStat reads /proc/PID/stat.
func ReadProcStat(pid int) (ProcStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ProcStat{}, err
	}
	return ParseProcStat(b)
}

// ParseProcStat parses a /proc/PID/stat line. The command name (field 2)
// is in parentheses and may itself hold spaces and parentheses, so fields
// are counted from the last ')'.
func ParseProcStat(b []byte) (ProcStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ProcStat{}, fmt.Errorf("malformed /proc stat %q", b)
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state); field 22 (starttime) is f[19].
	if len(f) < 20 || len(f[0]) != 1 {
		return ProcStat{}, fmt.Errorf("malformed /proc stat %q", b)
	}
	ticks, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return ProcStat{}, fmt.Errorf("malformed /proc stat start time %q", f[19])
	}
	return ProcStat{State: f[0][0], StartTicks: ticks}, nil
}

// Alive reports whether h's pid runs and started when h says, so a
// recycled pid is never taken for the VMM.
func Alive(h Handle) bool {
	if h.PID <= 0 {
		return false
	}
	st, err := ReadProcStat(h.PID)
	return err == nil && st.Running() && st.StartTicks == h.StartTicks
}

// ErrStillRunning ends the joined error of a Stop or Kill that failed.
var ErrStillRunning = errors.New("vmm still running")

// Ladder stops and kills the VMM processes of one driver: the stop ladder
// is Ask (the VMM asks the guest to shut down; best effort), wait up to
// the grace; SIGTERM, wait TermWait; SIGKILL, wait KillWait. Signals go
// through a pidfd, so they cannot reach a process that reused the pid.
type Ladder struct {
	// VMM names the process in messages ("qemu", "firecracker").
	VMM string
	// Ask asks the guest to shut down through the VMM's API, within
	// timeout; nil skips the step. AskWhat says how, for messages
	// ("qmp system_powerdown").
	Ask     func(ctx context.Context, h Handle, timeout time.Duration) error
	AskWhat string
	// TermWait and KillWait are the waits after SIGTERM and SIGKILL.
	TermWait, KillWait time.Duration
	// Children reaps the VMMs this process started, so none is left a
	// zombie.
	Children *Children
	Log      *slog.Logger
}

// Stop runs the ladder on h's process. It returns nil once the process is
// gone, however far down the ladder that took (each step taken is
// logged). If the process cannot be made to go, or ctx ends first, the
// error joins what each step found, ending with ErrStillRunning.
func (l *Ladder) Stop(ctx context.Context, h Handle, grace time.Duration) error {
	p, ok := l.attach(h)
	if !ok {
		return nil
	}
	defer p.close()
	var errs []error
	if l.Ask != nil && h.APISocket != "" && grace > 0 {
		if err := l.Ask(ctx, h, min(grace, 2*time.Second)); err != nil {
			errs = append(errs, fmt.Errorf("ask guest to shut down (%s): %w", l.AskWhat, err))
		}
	}
	steps := []struct {
		sig  unix.Signal
		wait time.Duration
	}{{0, grace}, {unix.SIGTERM, l.TermWait}, {unix.SIGKILL, l.KillWait}}
	for _, s := range steps {
		if s.sig != 0 {
			if err := p.signal(s.sig); err != nil {
				errs = append(errs, err)
			}
		}
		gone, err := l.waitGone(ctx, p, s.wait)
		if gone {
			by, level := "guest", slog.LevelInfo
			if s.sig != 0 {
				by = unix.SignalName(s.sig)
			}
			if s.sig == unix.SIGKILL {
				level = slog.LevelWarn
			}
			l.Log.Log(ctx, level, l.VMM+" stopped", "pid", h.PID, "by", by, "steps", joinText(errs))
			return nil
		}
		if err != nil {
			return errors.Join(append(errs, err, ErrStillRunning)...)
		}
		if s.sig == 0 {
			errs = append(errs, fmt.Errorf("guest did not shut down within %s", s.wait))
		} else {
			errs = append(errs, fmt.Errorf("%s did not exit within %s of %s", l.VMM, s.wait, unix.SignalName(s.sig)))
		}
	}
	return errors.Join(append(errs, ErrStillRunning)...)
}

// Kill sends SIGKILL to h's process and waits until it is gone.
func (l *Ladder) Kill(ctx context.Context, h Handle) error {
	p, ok := l.attach(h)
	if !ok {
		return nil
	}
	defer p.close()
	if err := p.signal(unix.SIGKILL); err != nil {
		return errors.Join(err, ErrStillRunning)
	}
	gone, err := l.waitGone(ctx, p, l.KillWait)
	if gone {
		return nil
	}
	if err == nil {
		err = fmt.Errorf("%s pid %d did not exit within %s of SIGKILL", l.VMM, h.PID, l.KillWait)
	}
	return errors.Join(err, ErrStillRunning)
}

// process is a handle's process, held by a pidfd where the kernel has
// them (5.3 and later).
type process struct {
	h   Handle
	vmm string
	fd  int // pidfd, or -1: fall back to the pid and polling
}

// attach returns h's process, or ok=false when it is gone (then it waits
// for our reaper, if we are its parent).
func (l *Ladder) attach(h Handle) (*process, bool) {
	if !Alive(h) {
		l.awaitReap(h.PID)
		return nil, false
	}
	fd, err := unix.PidfdOpen(h.PID, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			l.awaitReap(h.PID)
			return nil, false
		}
		return &process{h: h, vmm: l.VMM, fd: -1}, true
	}
	// Checked again now that fd pins the process: the pid may have been
	// reused between the first check and the open.
	if !Alive(h) {
		unix.Close(fd)
		l.awaitReap(h.PID)
		return nil, false
	}
	return &process{h: h, vmm: l.VMM, fd: fd}, true
}

func (p *process) close() {
	if p.fd >= 0 {
		unix.Close(p.fd)
	}
}

// signal sends sig; a process that is already gone is not an error.
func (p *process) signal(sig unix.Signal) error {
	var err error
	if p.fd >= 0 {
		err = unix.PidfdSendSignal(p.fd, sig, nil, 0)
	} else {
		err = unix.Kill(p.h.PID, sig)
	}
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("send %s to %s pid %d: %w", unix.SignalName(sig), p.vmm, p.h.PID, err)
	}
	return nil
}

// exited reports whether the process has exited (a zombie counts: it no
// longer runs, and only its parent can reap it), waiting at most wait.
func (p *process) exited(wait time.Duration) bool {
	if p.fd < 0 {
		if !Alive(p.h) {
			return true
		}
		time.Sleep(wait)
		return !Alive(p.h)
	}
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int(wait.Milliseconds()))
	return err == nil && n > 0
}

// waitGone waits up to timeout for the process to exit. It returns ctx's
// error if ctx ends first. Polling in short slices keeps cancellation
// prompt without a goroutine per wait.
func (l *Ladder) waitGone(ctx context.Context, p *process, timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	for {
		slice := min(time.Until(deadline), 50*time.Millisecond)
		if p.exited(max(slice, 0)) {
			l.awaitReap(p.h.PID)
			return true, nil
		}
		if err := ctx.Err(); err != nil {
			return false, err
		}
		if time.Now().After(deadline) {
			return false, nil
		}
	}
}

// awaitReap waits briefly for the reaper goroutine when this process is
// pid's parent, so that a stopped VMM leaves no zombie behind.
func (l *Ladder) awaitReap(pid int) {
	if l.Children == nil {
		return
	}
	if err := l.Children.AwaitReap(pid, 5*time.Second); err != nil {
		l.Log.Warn(l.VMM+" exited but was not reaped in time", "pid", pid, "err", err)
	}
}

// joinText renders step errors for a log line.
func joinText(errs []error) string {
	if err := errors.Join(errs...); err != nil {
		return err.Error()
	}
	return ""
}
