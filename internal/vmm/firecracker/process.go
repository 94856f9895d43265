package firecracker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/vmm"
)

// readStat returns the state (field 3) and start time (field 22) of pid.
func readStat(pid int) (byte, uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("malformed /proc stat %q", b)
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 20 || len(f[0]) != 1 {
		return 0, 0, fmt.Errorf("malformed /proc stat %q", b)
	}
	ticks, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("malformed /proc stat start time %q", f[19])
	}
	return f[0][0], ticks, nil
}

func readStartTicks(pid int) (uint64, error) {
	st, ticks, err := readStat(pid)
	if err == nil && (st == 'Z' || st == 'X') {
		err = errors.New("process exited")
	}
	return ticks, err
}

// Alive implements vmm.Driver: the pid runs and started when h says.
func (d *Driver) Alive(h vmm.Handle) bool {
	if h.PID <= 0 {
		return false
	}
	st, ticks, err := readStat(h.PID)
	return err == nil && st != 'Z' && st != 'X' && ticks == h.StartTicks
}

// Find implements vmm.Finder: the Firecracker named by dir's pid file, if
// that process's command line names dir's API socket.
func (d *Driver) Find(dir string) (vmm.Handle, bool) {
	paths := PathsFor(dir)
	b, err := os.ReadFile(paths.PIDFile)
	if err != nil {
		return vmm.Handle{}, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return vmm.Handle{}, false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || !bytes.Contains(cmdline, []byte("\x00"+paths.API+"\x00")) {
		return vmm.Handle{}, false
	}
	ticks, err := readStartTicks(pid)
	if err != nil {
		return vmm.Handle{}, false
	}
	return vmm.Handle{Driver: d.Name(), PID: pid, StartTicks: ticks, Channel: vmm.ChannelHybridVsock,
		AgentSocket: paths.Vsock, APISocket: paths.API, Accel: "kvm"}, true
}

// target pins a handle's process with a pidfd, so signals cannot reach a
// process that reused the pid.
type target struct {
	h  vmm.Handle
	fd int
}

func (d *Driver) attach(h vmm.Handle) (*target, bool) {
	if !d.Alive(h) {
		return nil, false
	}
	fd, err := unix.PidfdOpen(h.PID, 0)
	if err != nil {
		return nil, false
	}
	if !d.Alive(h) {
		unix.Close(fd)
		return nil, false
	}
	return &target{h: h, fd: fd}, true
}

func (t *target) signal(sig unix.Signal) error {
	if err := unix.PidfdSendSignal(t.fd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("send %s to firecracker pid %d: %w", unix.SignalName(sig), t.h.PID, err)
	}
	return nil
}

// waitGone waits up to timeout for the process to exit (the pidfd becomes
// readable), in short slices so ctx is honoured.
func (d *Driver) waitGone(ctx context.Context, t *target, timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	for {
		slice := max(min(time.Until(deadline), 50*time.Millisecond), 0)
		fds := []unix.PollFd{{Fd: int32(t.fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, int(slice.Milliseconds())); err == nil && n > 0 {
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

func (d *Driver) awaitReap(pid int) {
	if err := d.children.AwaitReap(pid, 5*time.Second); err != nil {
		d.log.Warn("firecracker exited but was not reaped in time", "pid", pid, "err", err)
	}
}

// errStillRunning ends the joined error of a Stop or Kill that failed.
var errStillRunning = errors.New("vmm still running")

// Stop implements vmm.Driver. The daemon has already asked the agent to
// power off; the ladder here is SendCtrlAltDel (best effort), wait up to
// grace; SIGTERM, wait; SIGKILL, wait. It returns nil once the process is
// gone; otherwise the joined steps, ending with "vmm still running".
func (d *Driver) Stop(ctx context.Context, h vmm.Handle, grace time.Duration) error {
	t, ok := d.attach(h)
	if !ok {
		d.awaitReap(h.PID)
		return nil
	}
	defer unix.Close(t.fd)
	var errs []error
	fail := func(err error) error { return errors.Join(append(errs, err, errStillRunning)...) }
	if h.APISocket != "" && grace > 0 {
		actx, cancel := context.WithTimeout(ctx, min(grace, 2*time.Second))
		if err := NewClient(h.APISocket).Action(actx, ActionSendCtrlAltDel); err != nil {
			errs = append(errs, fmt.Errorf("ask guest to stop (SendCtrlAltDel): %w", err))
		}
		cancel()
	}
	steps := []struct {
		sig  unix.Signal
		wait time.Duration
	}{{0, grace}, {unix.SIGTERM, d.termWait}, {unix.SIGKILL, d.killWait}}
	for _, s := range steps {
		if s.sig != 0 {
			if err := t.signal(s.sig); err != nil {
				errs = append(errs, err)
			}
		}
		gone, err := d.waitGone(ctx, t, s.wait)
		if gone {
			by := "guest shutdown"
			if s.sig != 0 {
				by = unix.SignalName(s.sig)
			}
			d.log.Info("firecracker stopped", "pid", h.PID, "by", by)
			return nil
		}
		if err != nil {
			return fail(err)
		}
		if s.sig == 0 {
			errs = append(errs, fmt.Errorf("guest did not stop within %s", s.wait))
		} else {
			errs = append(errs, fmt.Errorf("firecracker did not exit within %s of %s", s.wait, unix.SignalName(s.sig)))
		}
	}
	return errors.Join(append(errs, errStillRunning)...)
}

// Kill implements vmm.Driver: SIGKILL and wait.
func (d *Driver) Kill(ctx context.Context, h vmm.Handle) error {
	t, ok := d.attach(h)
	if !ok {
		d.awaitReap(h.PID)
		return nil
	}
	defer unix.Close(t.fd)
	if err := t.signal(unix.SIGKILL); err != nil {
		return errors.Join(err, errStillRunning)
	}
	gone, err := d.waitGone(ctx, t, d.killWait)
	if gone {
		return nil
	}
	if err == nil {
		err = fmt.Errorf("firecracker pid %d did not exit within %s of SIGKILL", h.PID, d.killWait)
	}
	return errors.Join(err, errStillRunning)
}
