package image

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/agent/proto"
)

// SystemdUnit is the unit installed at proto.SystemdUnitPath in images
// whose init is systemd. It runs the copy of the agent that the init-mode
// agent leaves in /run before switch_root, so the image never needs
// updating when kiln is.
const SystemdUnit = `# Installed by kiln: the kiln guest agent, the VM's control channel.
[Unit]
Description=kiln guest agent
Documentation=https://github.com/kilnvm/kiln
# The init-mode agent copies itself here before handing over to systemd.
# Booted any other way, the file is absent and the unit stays inactive.
ConditionPathExists=` + proto.AgentRunPath + `
# Start as soon as local filesystems are mounted, well before the network
# and multi-user.target: the host reaches the agent over virtio-serial or
# vsock, which need no network, and the VM counts as ready when it answers.
DefaultDependencies=no
After=local-fs.target systemd-journald.socket
Conflicts=shutdown.target
Before=shutdown.target
# Restart=always must not give up after a burst of failures.
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart=` + proto.AgentRunPath + ` service
Restart=always
RestartSec=1
# Keep the control channel alive when the guest runs out of memory.
OOMScoreAdjust=-900

[Install]
WantedBy=multi-user.target
`

// unitWantsLink is the symlink `systemctl enable` would make for the unit.
const unitWantsLink = "/etc/systemd/system/multi-user.target.wants/kiln-agent.service"

// baseDirs exist in every image: the agent mounts proc, sys, dev and run
// on them, and /root and /tmp are where users and tools expect them.
func baseDirs() []baseDir {
	return []baseDir{
		{"root", 0o700},
		{"tmp", 0o1777},
		{"run", 0o755},
		{"proc", 0o555},
		{"sys", 0o555},
		{"dev", 0o755},
	}
}

type baseDir struct {
	path string
	mode uint32
}

// prepareTree makes an extracted tree into a kiln image: the base
// directories, the agent binary at proto.ImageAgentPath and, when the
// image's init is systemd, the agent's unit (enabled) and an empty
// machine-id so each VM gets its own. It reports whether init is systemd.
// Every write goes through root, so symlinks in the tree cannot redirect
// it outside.
func prepareTree(dir, agentPath string) (hasSystemd bool, err error) {
	r, err := openRoot(dir)
	if err != nil {
		return false, err
	}
	defer r.close()
	for _, d := range baseDirs() {
		if err := ensureDir(r, d.path, d.mode); err != nil {
			return false, err
		}
	}
	agent, err := os.Open(agentPath)
	if err != nil {
		return false, fmt.Errorf("open agent binary: %w", err)
	}
	defer agent.Close()
	if err := writeInTree(r, proto.ImageAgentPath, agent, 0o755); err != nil {
		return false, fmt.Errorf("inject agent: %w", err)
	}
	hasSystemd = initIsSystemd(r)
	if !hasSystemd {
		return false, nil
	}
	if err := writeInTree(r, proto.SystemdUnitPath, strings.NewReader(SystemdUnit), 0o644); err != nil {
		return false, fmt.Errorf("install agent unit: %w", err)
	}
	if err := symlinkInTree(r, unitWantsLink, proto.SystemdUnitPath); err != nil {
		return false, fmt.Errorf("enable agent unit: %w", err)
	}
	if err := emptyMachineID(r); err != nil {
		return false, err
	}
	return true, nil
}

// ensureDir creates the top-level directory name, root-owned with mode,
// unless something already stands there (which is then the image's choice).
func ensureDir(r *root, name string, mode uint32) error {
	if _, err := lstatAt(r.fd, name); err == nil {
		return nil
	} else if !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("check /%s: %w", name, err)
	}
	if err := unix.Mkdirat(r.fd, name, 0o700); err != nil {
		return fmt.Errorf("create /%s: %w", name, err)
	}
	if err := unix.Fchownat(r.fd, name, 0, 0, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown /%s: %w", name, err)
	}
	if err := unix.Fchmodat(r.fd, name, mode, 0); err != nil {
		return fmt.Errorf("chmod /%s: %w", name, err)
	}
	return nil
}

// writeInTree writes src to the absolute in-image path p, root-owned with
// mode, replacing any non-directory there.
func writeInTree(r *root, p string, src io.Reader, mode uint32) error {
	dirfd, base, err := r.parent(path.Clean(p)[1:])
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	defer unix.Close(dirfd)
	if _, err := clearForNew(dirfd, base, false); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	fd, err := unix.Openat(dirfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", p, err)
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	if _, err := io.Copy(f, src); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := unix.Fchown(fd, 0, 0); err != nil {
		return fmt.Errorf("chown %s: %w", p, err)
	}
	if err := unix.Fchmod(fd, mode); err != nil {
		return fmt.Errorf("chmod %s: %w", p, err)
	}
	return f.Close()
}

func symlinkInTree(r *root, p, target string) error {
	dirfd, base, err := r.parent(path.Clean(p)[1:])
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	defer unix.Close(dirfd)
	if _, err := clearForNew(dirfd, base, false); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if err := unix.Symlinkat(target, dirfd, base); err != nil {
		return fmt.Errorf("symlink %s: %w", p, err)
	}
	return unix.Fchownat(dirfd, base, 0, 0, unix.AT_SYMLINK_NOFOLLOW)
}

// initIsSystemd reports whether /sbin/init, followed inside the tree, is a
// regular file named systemd (Debian's /sbin/init -> /lib/systemd/systemd).
func initIsSystemd(r *root) bool {
	fd, err := unix.Openat2(r.fd, "sbin/init", &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: resolveFlags,
	})
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return false
	}
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return false
	}
	return filepath.Base(real) == "systemd"
}

// emptyMachineID truncates /etc/machine-id when it holds an id: an image
// copied to many VMs must not give them all one identity, and systemd
// makes a fresh id at boot when the file is empty.
func emptyMachineID(r *root) error {
	dirfd, err := r.openDir("etc")
	if err != nil {
		return nil
	}
	defer unix.Close(dirfd)
	fd, err := unix.Openat(dirfd, "machine-id", unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil // absent, or not a plain file: leave it to the image
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil
	}
	if err := unix.Ftruncate(fd, 0); err != nil {
		return fmt.Errorf("empty /etc/machine-id: %w", err)
	}
	return nil
}
