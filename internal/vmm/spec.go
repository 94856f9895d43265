package vmm

import (
	"path/filepath"
	"regexp"

	"github.com/kilnvm/kiln/internal/api"
)

// MaxSocketPath is the longest path a Unix socket address holds (sun_path
// is 108 bytes including the terminating NUL).
const MaxSocketPath = 107

var (
	// tapNameRE is what Linux accepts as an interface name and QEMU's
	// option parser passes through unchanged (no commas).
	tapNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
	macRE     = regexp.MustCompile(`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$`)
)

// Check validates what every driver relies on, with a clear bad_request
// before any process starts: the name, absolute paths, 1..maxCPUs vCPUs
// (the driver's limit), at least 64 MiB, well-formed NICs,
// and the runtime sockets' path lengths. It does not touch the file
// system (see CheckFiles); drivers check what is theirs alone after it.
func (s Spec) Check(maxCPUs int, sockets ...string) error {
	bad := func(format string, args ...any) error {
		return api.Errorf(api.ErrBadRequest, "vm %q: "+format, append([]any{s.Name}, args...)...)
	}
	if err := api.ValidateName("vm", s.Name); err != nil {
		return err
	}
	if !filepath.IsAbs(s.Dir) {
		return bad("runtime dir %q is not an absolute path", s.Dir)
	}
	if s.CPUs < 1 || s.CPUs > maxCPUs {
		return bad("cpus %d out of range 1-%d", s.CPUs, maxCPUs)
	}
	if s.MemoryMiB < 64 {
		return bad("memory %d MiB is below the minimum of 64 MiB", s.MemoryMiB)
	}
	for what, p := range map[string]string{"kernel": s.Kernel, "initrd": s.Initrd, "serial log": s.SerialLog} {
		if (p != "" || what == "kernel") && !filepath.IsAbs(p) {
			return bad("%s %q is not an absolute path", what, p)
		}
	}
	for i, d := range s.Disks {
		if !filepath.IsAbs(d.Path) {
			return bad("disk %d path %q is not an absolute path", i, d.Path)
		}
	}
	for i, n := range s.NICs {
		if n.User && n.TAP != "" {
			return bad("nic %d: a user-mode nic takes no tap (got %q)", i, n.TAP)
		}
		if !n.User && !tapNameRE.MatchString(n.TAP) {
			return bad("nic %d: invalid tap name %q", i, n.TAP)
		}
		if n.MAC != "" && !macRE.MatchString(n.MAC) {
			return bad("nic %d: invalid mac %q", i, n.MAC)
		}
	}
	if s.RunAsUID < 0 || s.RunAsGID < 0 {
		return bad("negative run-as uid/gid %d:%d", s.RunAsUID, s.RunAsGID)
	}
	for _, p := range sockets {
		if len(p) > MaxSocketPath {
			return bad("socket path %q is longer than %d bytes; use a shorter runtime dir", p, MaxSocketPath)
		}
	}
	return nil
}
