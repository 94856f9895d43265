package daemon

import "strings"

// guestCmdline is the kernel command line of a VM: the console on the
// first serial port (captured to the VM's console log), an immediate
// power-off on panic (the VMM runs with -no-reboot), and the user's extra.
func guestCmdline(extra string) string {
	args := []string{"console=ttyS0", "reboot=k", "panic=-1", "quiet"}
	if extra = strings.TrimSpace(extra); extra != "" {
		args = append(args, extra)
	}
	return strings.Join(args, " ")
}
