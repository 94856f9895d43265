package firecracker

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kilnvm/kiln/internal/vmm"
)

// readStartTicks returns the start time of pid, or an error if it exited.
func readStartTicks(pid int) (uint64, error) {
	st, err := vmm.ReadProcStat(pid)
	if err == nil && !st.Running() {
		err = errors.New("process exited")
	}
	return st.StartTicks, err
}

// Alive implements vmm.Driver: the pid runs and started when h says.
func (d *Driver) Alive(h vmm.Handle) bool { return vmm.Alive(h) }

// Find implements vmm.Finder: the Firecracker named by dir's pid file, if
// that process's command line names dir's API socket, or, for a jailed
// one (dir's API socket is a link into the chroot), the jail's socket and
// the jail id.
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
	if err != nil || !cmdlineMatches(cmdline, paths.API) {
		return vmm.Handle{}, false
	}
	ticks, err := readStartTicks(pid)
	if err != nil {
		return vmm.Handle{}, false
	}
	return vmm.Handle{Driver: d.Name(), PID: pid, StartTicks: ticks, Channel: vmm.ChannelHybridVsock,
		AgentSocket: paths.Vsock, APISocket: paths.API, Accel: "kvm"}, true
}

// cmdlineMatches reports whether a /proc cmdline is the Firecracker that
// serves apiSock: it names apiSock itself, or, when apiSock links into a
// jail (.../<id>/root/firecracker.socket), it names the jail's socket and
// --id=<id>, as jailer passes it.
func cmdlineMatches(cmdline []byte, apiSock string) bool {
	if bytes.Contains(cmdline, []byte("\x00"+apiSock+"\x00")) {
		return true
	}
	target, err := os.Readlink(apiSock)
	if err != nil || filepath.Base(target) != filepath.Base(jailAPISocket) || filepath.Base(filepath.Dir(target)) != "root" {
		return false
	}
	id := filepath.Base(filepath.Dir(filepath.Dir(target)))
	return bytes.Contains(cmdline, []byte("\x00--id="+id+"\x00")) && bytes.Contains(cmdline, []byte("\x00"+jailAPISocket+"\x00"))
}

// ladder is the stop ladder: SendCtrlAltDel (best effort), then SIGTERM,
// then SIGKILL.
func (d *Driver) ladder() *vmm.Ladder {
	return &vmm.Ladder{VMM: "firecracker", AskWhat: "SendCtrlAltDel",
		Ask: func(ctx context.Context, h vmm.Handle, timeout time.Duration) error {
			actx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			return NewClient(h.APISocket).Action(actx, ActionSendCtrlAltDel)
		},
		TermWait: d.termWait, KillWait: d.killWait, Children: &d.children, Log: d.log}
}

// Stop implements vmm.Driver. The daemon has already asked the agent to
// power off; the ladder here is SendCtrlAltDel, wait up to grace;
// SIGTERM, wait; SIGKILL, wait (see vmm.Ladder.Stop).
func (d *Driver) Stop(ctx context.Context, h vmm.Handle, grace time.Duration) error {
	return d.ladder().Stop(ctx, h, grace)
}

// Kill implements vmm.Driver: SIGKILL and wait.
func (d *Driver) Kill(ctx context.Context, h vmm.Handle) error {
	return d.ladder().Kill(ctx, h)
}
