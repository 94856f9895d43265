package qemu

import (
	"bytes"
	"os"
	"strconv"
	"strings"

	"github.com/kilnvm/kiln/internal/vmm"
)

// Find returns the QEMU running for the runtime directory dir, from its
// pid file, if the process with that pid really is that QEMU (its command
// line names dir's QMP socket).
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
	if err != nil || !bytes.Contains(cmdline, []byte(optPath(paths.QMP))) {
		return vmm.Handle{}, false
	}
	st, err := vmm.ReadProcStat(pid)
	if err != nil || !st.Running() {
		return vmm.Handle{}, false
	}
	return vmm.Handle{Driver: d.Name(), PID: pid, StartTicks: st.StartTicks, Channel: d.dec.Channel,
		AgentSocket: paths.Agent, APISocket: paths.QMP}, true
}
