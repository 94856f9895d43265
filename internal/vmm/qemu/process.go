package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/vmm"
)

// procStat is what the driver reads from /proc/PID/stat.
type procStat struct {
	state      byte   // field 3: R, S, D, Z, X, ...
	startTicks uint64 // field 22: start time in clock ticks after boot
}

// readProcStat reads /proc/PID/stat.
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(b)
}

// parseProcStat parses a /proc/PID/stat line. The command name (field 2)
// is in parentheses and may itself hold spaces and parentheses, so fields
// are counted from the last ')'.
func parseProcStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("malformed /proc stat %q", b)
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state); field 22 (starttime) is f[19].
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("malformed /proc stat %q", b)
	}
	ticks, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("malformed /proc stat start time %q", f[19])
	}
	return procStat{state: f[0][0], startTicks: ticks}, nil
}

// Alive implements vmm.Driver: the pid exists, is not a zombie, and started
// when h says, so a recycled pid is never taken for the VMM.
func (d *Driver) Alive(h vmm.Handle) bool { return alive(h) }

func alive(h vmm.Handle) bool {
	if h.PID <= 0 {
		return false
	}
	st, err := readProcStat(h.PID)
	if err != nil {
		return false
	}
	return st.state != 'Z' && st.state != 'X' && st.startTicks == h.StartTicks
}

// target is a handle's process, held by a pidfd where the kernel has them,
// so that signals cannot reach a process that reused the pid.
type target struct {
	h  vmm.Handle
	fd int // pidfd, or -1 (kernel before 5.3): fall back to pid and polling
}

// attach returns the target for h, or ok=false when h's process is gone.
func attach(h vmm.Handle) (t *target, ok bool) {
	if !alive(h) {
		return nil, false
	}
	fd, err := unix.PidfdOpen(h.PID, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, false
		}
		return &target{h: h, fd: -1}, true
	}
	// Checked again now that fd pins the process: the pid may have been
	// reused between the first check and the open.
	if !alive(h) {
		unix.Close(fd)
		return nil, false
	}
	return &target{h: h, fd: fd}, true
}

func (t *target) close() {
	if t.fd >= 0 {
		unix.Close(t.fd)
	}
}

// signal sends sig; a process that is already gone is not an error.
func (t *target) signal(sig unix.Signal) error {
	var err error
	if t.fd >= 0 {
		err = unix.PidfdSendSignal(t.fd, sig, nil, 0)
	} else {
		err = unix.Kill(t.h.PID, sig)
	}
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("send %s to qemu pid %d: %w", unix.SignalName(sig), t.h.PID, err)
	}
	return nil
}

// exited reports whether the process has exited (a zombie counts: it no
// longer runs, and only its parent can reap it), waiting at most wait.
func (t *target) exited(wait time.Duration) bool {
	if t.fd < 0 {
		if !alive(t.h) {
			return true
		}
		time.Sleep(wait)
		return !alive(t.h)
	}
	fds := []unix.PollFd{{Fd: int32(t.fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int(wait.Milliseconds()))
	return err == nil && n > 0
}

// waitGone waits up to timeout for the process to exit. It returns ctx's
// error if ctx ends first. Polling in short slices keeps cancellation
// prompt without a goroutine per wait.
func (d *Driver) waitGone(ctx context.Context, t *target, timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	for {
		slice := min(time.Until(deadline), 50*time.Millisecond)
		if t.exited(max(slice, 0)) {
			d.awaitReap(t.h.PID)
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
func (d *Driver) awaitReap(pid int) {
	if err := d.children.AwaitReap(pid, 5*time.Second); err != nil {
		d.log.Warn("qemu exited but was not reaped in time", "pid", pid, "err", err)
	}
}

// Stop implements vmm.Driver. The ladder: QMP system_powerdown (the ACPI
// power button; best effort), wait up to grace; SIGTERM (QEMU exits
// cleanly), wait; SIGKILL, wait. It returns nil once the process is gone,
// however far down the ladder that took (each step taken is logged). If the
// process cannot be made to go, or ctx ends first, the error joins what
// each step found, ending with "vmm still running".
func (d *Driver) Stop(ctx context.Context, h vmm.Handle, grace time.Duration) error {
	t, ok := attach(h)
	if !ok {
		d.awaitReap(h.PID)
		return nil
	}
	defer t.close()
	log := d.log.With("pid", h.PID)
	var errs []error
	fail := func(err error) error {
		return errors.Join(append(errs, err, errStillRunning)...)
	}

	if h.APISocket != "" && grace > 0 {
		if _, err := qmpRun(ctx, h.APISocket, min(grace, 2*time.Second), "system_powerdown"); err != nil {
			errs = append(errs, fmt.Errorf("ask guest to power off (qmp system_powerdown): %w", err))
		}
	}
	gone, err := d.waitGone(ctx, t, grace)
	if gone {
		log.Info("qemu stopped", "by", "power-off")
		return nil
	}
	if err != nil {
		return fail(err)
	}
	errs = append(errs, fmt.Errorf("guest did not power off within %s", grace))

	if err := t.signal(unix.SIGTERM); err != nil {
		errs = append(errs, err)
	}
	gone, err = d.waitGone(ctx, t, d.termWait)
	if gone {
		log.Info("qemu stopped", "by", "SIGTERM", "steps", joinText(errs))
		return nil
	}
	if err != nil {
		return fail(err)
	}
	errs = append(errs, fmt.Errorf("qemu did not exit within %s of SIGTERM", d.termWait))

	if err := t.signal(unix.SIGKILL); err != nil {
		errs = append(errs, err)
	}
	gone, err = d.waitGone(ctx, t, d.killWait)
	if gone {
		log.Warn("qemu stopped", "by", "SIGKILL", "steps", joinText(errs))
		return nil
	}
	if err == nil {
		err = fmt.Errorf("qemu did not exit within %s of SIGKILL", d.killWait)
	}
	return fail(err)
}

// Kill implements vmm.Driver: SIGKILL, then wait until the process is gone.
func (d *Driver) Kill(ctx context.Context, h vmm.Handle) error {
	t, ok := attach(h)
	if !ok {
		d.awaitReap(h.PID)
		return nil
	}
	defer t.close()
	if err := t.signal(unix.SIGKILL); err != nil {
		return errors.Join(err, errStillRunning)
	}
	gone, err := d.waitGone(ctx, t, d.killWait)
	if gone {
		return nil
	}
	if err == nil {
		err = fmt.Errorf("qemu pid %d did not exit within %s of SIGKILL", h.PID, d.killWait)
	}
	return errors.Join(err, errStillRunning)
}

// joinText renders step errors for a log line.
func joinText(errs []error) string {
	if err := errors.Join(errs...); err != nil {
		return err.Error()
	}
	return ""
}
