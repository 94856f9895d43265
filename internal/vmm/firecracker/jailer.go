package firecracker

// Launching Firecracker through its jailer: the argv, the chroot layout and
// the hard links that put a VM's artefacts inside the chroot. These are the
// building blocks; Driver.Start does not use them yet (see
// docs/firecracker.md, "Jailer").

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/vmm"
)

// JailerConfig says how to launch Firecracker through jailer.
type JailerConfig struct {
	// Binary is the jailer executable (config jailer_binary).
	Binary string
	// UID and GID are what Firecracker runs as inside the jail; not 0.
	UID, GID int
	// ChrootBase is the jailer's --chroot-base-dir. It must be on the
	// filesystem of the image and kernel stores: artefacts are hard-linked.
	ChrootBase string
	// Cgroups are cgroup v2 settings, "file=value" (e.g. "cpu.max=50000 100000",
	// "memory.max=1073741824"), each passed as --cgroup.
	Cgroups []string
}

// In-chroot locations (as Firecracker sees them, the chroot being "/").
const (
	jailAPISocket = "/run/firecracker.socket"
	jailVsock     = "/vsock.sock"
	jailLog       = "/firecracker.log"
	jailMetrics   = "/firecracker.metrics"
	jailKernel    = "/vmlinux"
	jailInitrd    = "/initrd"
)

// Jail is the chroot of one jailed Firecracker.
type Jail struct {
	// Root is <ChrootBase>/<exec file name>/<id>/root on the host.
	Root string
	// Host are the host-side paths of the API socket, vsock socket, pid
	// file (written by jailer), log and metrics, all under Root.
	Host Paths
	// Inner are the same files as Firecracker names them (under "/"); Plan
	// is given Inner.
	Inner Paths
}

// JailFor returns the layout jailer creates for id when it runs execFile
// under base.
func JailFor(base, execFile, id string) Jail {
	root := filepath.Join(base, filepath.Base(execFile), id, "root")
	inner := Paths{API: jailAPISocket, Vsock: jailVsock, PIDFile: "/" + filepath.Base(execFile) + ".pid",
		Log: jailLog, Metrics: jailMetrics}
	host := func(p string) string { return filepath.Join(root, p) }
	return Jail{Root: root, Inner: inner, Host: Paths{API: host(inner.API), Vsock: host(inner.Vsock),
		PIDFile: host(inner.PIDFile), Log: host(inner.Log), Metrics: host(inner.Metrics)}}
}

var (
	// jailer's --id: alphanumerics and '-', at most 64.
	jailIDRE = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)
	// a cgroup v2 interface file such as cpu.max or memory.high.
	cgroupRE = regexp.MustCompile(`^[a-z]+\.[a-z_.]+=\S.*$`)
)

// validateJailer checks cfg and id before anything is launched.
func validateJailer(cfg JailerConfig, id string) error {
	bad := func(format string, args ...any) error {
		return api.Errorf(api.ErrBadRequest, "jailer: "+format, args...)
	}
	switch {
	case cfg.Binary == "":
		return bad("no jailer binary configured")
	case cfg.UID <= 0 || cfg.GID <= 0:
		return bad("uid %d / gid %d: the jail must run as a non-root user and group", cfg.UID, cfg.GID)
	case !filepath.IsAbs(cfg.ChrootBase):
		return bad("chroot base %q is not an absolute path", cfg.ChrootBase)
	case !jailIDRE.MatchString(id):
		return bad("id %q: want 1-64 letters, digits and '-'", id)
	}
	for _, c := range cfg.Cgroups {
		if !cgroupRE.MatchString(c) {
			return bad("cgroup setting %q: want file=value, e.g. cpu.max=50000 100000", c)
		}
	}
	return nil
}

// JailerArgs returns the jailer argv (without the jailer binary itself)
// that runs execFile (an absolute firecracker path) as id: jailer's own
// flags, "--", then Firecracker's flags with the API socket inside the
// chroot. The uid/gid must be non-root; jailer copies execFile into the
// chroot and writes Firecracker's pid to Jail.Host.PIDFile.
func JailerArgs(cfg JailerConfig, id, execFile string) ([]string, error) {
	if err := validateJailer(cfg, id); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(execFile) {
		return nil, api.Errorf(api.ErrBadRequest, "jailer: exec file %q is not an absolute path", execFile)
	}
	if !strings.Contains(filepath.Base(execFile), "firecracker") {
		// jailer itself refuses other names.
		return nil, api.Errorf(api.ErrBadRequest, "jailer: exec file %q: its name must contain \"firecracker\"", execFile)
	}
	args := []string{"--id", id, "--exec-file", execFile,
		"--uid", strconv.Itoa(cfg.UID), "--gid", strconv.Itoa(cfg.GID),
		"--chroot-base-dir", cfg.ChrootBase, "--cgroup-version", "2"}
	for _, c := range cfg.Cgroups {
		args = append(args, "--cgroup", c)
	}
	return append(args, "--", "--api-sock", jailAPISocket, "--id", id), nil
}

// Link is one hard link to make into a jail.
type Link struct {
	Src, Dst string // host paths; Dst is under Jail.Root
	// Chown: the jailed user must write it (a writable drive). Read-only
	// artefacts are not chowned: a hard link shares the inode, so chowning
	// a shared kernel would hand it to the jail user.
	Chown bool
}

// JailSpec rewrites spec's kernel, initrd and disks to their names inside
// j, and returns the links that put them there. Disk i is /drive<i>.
func JailSpec(spec vmm.Spec, j Jail) (vmm.Spec, []Link) {
	var links []Link
	add := func(src, inner string, chown bool) string {
		links = append(links, Link{Src: src, Dst: filepath.Join(j.Root, inner), Chown: chown})
		return inner
	}
	out := spec
	out.Kernel = add(spec.Kernel, jailKernel, false)
	if spec.Initrd != "" {
		out.Initrd = add(spec.Initrd, jailInitrd, false)
	}
	out.Disks = make([]vmm.Disk, len(spec.Disks))
	for i, d := range spec.Disks {
		d.Path = add(d.Path, "/drive"+strconv.Itoa(i), !d.ReadOnly)
		out.Disks[i] = d
	}
	return out, links
}

// CheckSameFilesystem refuses, with ErrFailedPrecondition, when any of
// files is on another filesystem than chrootBase (or, if chrootBase does
// not exist yet, its nearest existing parent): hard links cannot cross.
func CheckSameFilesystem(chrootBase string, files ...string) error {
	dir := chrootBase
	var st unix.Stat_t
	for {
		err := unix.Stat(dir, &st)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.ENOENT) || dir == "/" {
			return fmt.Errorf("jailer: stat chroot base %s: %w", dir, err)
		}
		dir = filepath.Dir(dir)
	}
	for _, f := range files {
		var fst unix.Stat_t
		if err := unix.Stat(f, &fst); err != nil {
			return api.Errorf(api.ErrBadRequest, "jailer: %s: %v", f, err)
		}
		if fst.Dev != st.Dev {
			return api.Hinted(api.Errorf(api.ErrFailedPrecondition,
				"jailer: %s is on another filesystem than the chroot base %s; artefacts are hard-linked into the jail, which needs one filesystem", f, chrootBase),
				"set jailer_chroot_base to a directory on the filesystem of the kiln state directory")
		}
	}
	return nil
}

// LinkInto makes links (creating parent directories 0700), chowning those
// marked Chown to uid:gid. On failure it removes the links it made.
func LinkInto(links []Link, uid, gid int) error {
	var made []string
	undo := func(err error) error {
		for _, p := range made {
			os.Remove(p)
		}
		return err
	}
	for _, l := range links {
		if err := os.MkdirAll(filepath.Dir(l.Dst), 0o700); err != nil {
			return undo(fmt.Errorf("jailer: %w", err))
		}
		if err := os.Remove(l.Dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return undo(fmt.Errorf("jailer: remove stale %s: %w", l.Dst, err))
		}
		if err := os.Link(l.Src, l.Dst); err != nil {
			if errors.Is(err, unix.EXDEV) {
				err = fmt.Errorf("%w (hard links need one filesystem): %w", err, api.ErrFailedPrecondition)
			}
			return undo(fmt.Errorf("jailer: link %s into the jail: %w", l.Src, err))
		}
		made = append(made, l.Dst)
		if l.Chown {
			if err := os.Chown(l.Dst, uid, gid); err != nil {
				return undo(fmt.Errorf("jailer: chown %s: %w", l.Dst, err))
			}
		}
	}
	return nil
}

// ReadJailPID reads the pid jailer wrote for Firecracker in j.
func ReadJailPID(j Jail) (int, error) {
	b, err := os.ReadFile(j.Host.PIDFile)
	if err != nil {
		return 0, fmt.Errorf("jailer: read firecracker pid: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("jailer: malformed pid file %s: %q", j.Host.PIDFile, b)
	}
	return pid, nil
}
