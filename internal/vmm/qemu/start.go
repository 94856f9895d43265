package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/vmm"
)

// Start implements vmm.Driver. It validates spec, starts QEMU in its own
// session (stdin /dev/null, stdout and stderr appended to DIR/qemu.log) so
// that the daemon's exit or restart does not take it down, and returns once
// QEMU answers on its QMP socket: then the machine is built and the guest
// is running. If QEMU exits first, the error carries the tail of its log.
// On any error no QEMU process is left.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Handle, error) {
	if d.decErr != nil {
		return vmm.Handle{}, d.decErr
	}
	paths := PathsFor(spec.Dir)
	if d.dec.Channel == vmm.ChannelVsock && spec.CID == 0 {
		spec.CID = CIDFor(spec.Name)
	}
	if err := validateSpec(spec, paths, d.dec.Channel); err != nil {
		return vmm.Handle{}, err
	}
	if err := vmm.CheckFiles(spec); err != nil {
		return vmm.Handle{}, err
	}
	bin, err := d.lookBinary()
	if err != nil {
		return vmm.Handle{}, err
	}
	var rel Release
	if spec.RunAsUID != 0 || spec.RunAsGID != 0 {
		// Only the privilege-dropping flag depends on the version.
		if rel, err = d.qemuRelease(ctx); err != nil {
			return vmm.Handle{}, fmt.Errorf("vm %q: %w", spec.Name, err)
		}
	}
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return vmm.Handle{}, fmt.Errorf("vm %q: create runtime dir: %w", spec.Name, err)
	}
	if err := d.claimDir(ctx, spec.Name, paths); err != nil {
		return vmm.Handle{}, err
	}
	args := Cmdline(spec, paths, d.dec.Accel, d.dec.Channel, rel)
	if d.dec.Accel == AccelTCG && spec.CPUs > tcgCPUs {
		d.log.Info("qemu: TCG guests run with one vCPU", "vm", spec.Name, "requested", spec.CPUs)
	}

	logf, err := os.OpenFile(paths.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return vmm.Handle{}, fmt.Errorf("vm %q: open qemu log: %w", spec.Name, err)
	}
	defer logf.Close() // QEMU holds its own descriptor
	fmt.Fprintf(logf, "--- kiln: %s: starting %s %s\n",
		time.Now().UTC().Format(time.RFC3339), bin, strings.Join(args, " "))
	logStart, err := logf.Seek(0, io.SeekEnd)
	if err != nil {
		return vmm.Handle{}, fmt.Errorf("vm %q: qemu log: %w", spec.Name, err)
	}

	cmd := exec.Command(bin, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	done, err := d.children.Start(cmd)
	if err != nil {
		return vmm.Handle{}, fmt.Errorf("vm %q: start qemu: %w", spec.Name, err)
	}
	pid := cmd.Process.Pid

	fail := func(err error) (vmm.Handle, error) {
		_ = cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(d.killWait):
			d.log.Error("qemu did not exit after SIGKILL", "pid", pid)
		}
		for _, p := range []string{paths.QMP, paths.Agent, paths.PIDFile} {
			os.Remove(p)
		}
		return vmm.Handle{}, fmt.Errorf("vm %q: %w", spec.Name, err)
	}
	exited := func() error {
		return fmt.Errorf("qemu exited (%s) before it was ready: %s",
			cmd.ProcessState, vmm.LogTail("qemu", paths.Log, logStart))
	}

	if err := d.waitReady(ctx, paths.QMP, done); err != nil {
		if errors.Is(err, errExited) {
			err = exited()
		}
		return fail(err)
	}
	st, err := vmm.ReadProcStat(pid)
	if err != nil {
		// It exited between answering QMP and now.
		<-done
		return fail(exited())
	}

	h := vmm.Handle{
		Driver:     d.Name(),
		PID:        pid,
		StartTicks: st.StartTicks,
		Channel:    d.dec.Channel,
		APISocket:  paths.QMP,
		Accel:      d.dec.Accel,
	}
	if d.dec.Channel == vmm.ChannelVsock {
		h.CID = spec.CID
	} else {
		h.AgentSocket = paths.Agent
	}
	d.log.Info("qemu started", "vm", spec.Name, "pid", pid, "accel", h.Accel, "channel", h.Channel)
	return h, nil
}

// errExited tells waitReady's caller that QEMU exited while being waited on.
var errExited = errors.New("qemu exited")

// waitReady waits until QEMU answers query-status on its QMP socket, or it
// exits (done closes), ctx ends, or the start timeout passes.
func (d *Driver) waitReady(ctx context.Context, qmp string, done <-chan struct{}) error {
	timeout := time.NewTimer(d.startTimeout)
	defer timeout.Stop()
	retry := time.NewTicker(20 * time.Millisecond)
	defer retry.Stop()
	var lastErr error
	for {
		select {
		case <-done:
			return errExited
		default:
		}
		_, err := qmpRun(ctx, qmp, time.Second, "query-status")
		if err == nil {
			return nil
		}
		lastErr = err
		select {
		case <-done:
			return errExited
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.Canceled) {
				return fmt.Errorf("wait for qemu to start: %w: %w", ctx.Err(), api.ErrCanceled)
			}
			return fmt.Errorf("wait for qemu to start: %w", ctx.Err())
		case <-timeout.C:
			return fmt.Errorf("qemu did not answer on %s within %s: %w", qmp, d.startTimeout, lastErr)
		case <-retry.C:
		}
	}
}

// claimDir makes sure no VMM is running in the runtime dir, then removes
// stale sockets and pid file left by one that died without cleaning up.
func (d *Driver) claimDir(ctx context.Context, name string, paths Paths) error {
	if _, err := os.Stat(paths.QMP); err == nil {
		// A listening socket accepts at once, even while its QEMU is busy.
		if _, err := qmpRun(ctx, paths.QMP, 200*time.Millisecond); err == nil || !isRefused(err) {
			return api.Errorf(api.ErrConflict, "vm %q: a VMM is already running in %s", name, paths.QMP)
		}
	}
	for _, p := range []string{paths.QMP, paths.Agent, paths.PIDFile} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("vm %q: remove stale %s: %w", name, p, err)
		}
	}
	return nil
}

// isRefused reports whether a dial failed because nothing listens.
func isRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, fs.ErrNotExist)
}
