package firecracker

import "os/exec"

// privateCommand returns a command that runs bin with args under umask 077,
// so the API and vsock sockets Firecracker creates are born private (on
// top of the 0700 runtime dir). A /bin/sh trampoline sets the umask and
// execs bin, which keeps the pid and bin's own command line (Find matches
// it) and, unlike umask(2) in the daemon, does not change the process-wide
// umask under the daemon's other goroutines.
func privateCommand(bin string, args ...string) *exec.Cmd {
	return exec.Command("/bin/sh", append([]string{"-c", `umask 077 && exec "$0" "$@"`, bin}, args...)...)
}
