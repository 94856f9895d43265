package firecracker

// Launching Firecracker through its jailer: the argv, the chroot layout,
// the hard links that put a VM's artefacts inside the chroot, and removing
// the chroot and cgroup once the VMM is gone. Driver.Start uses these when
// Config.Jailer is set (see docs/firecracker.md, "Jailer").

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

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
// Everything sits in the chroot's root, the one directory jailer chowns to
// the jail user, so Firecracker can create its sockets there.
const (
	jailAPISocket = "/firecracker.socket"
	jailVsock     = "/vsock.sock"
	jailLog       = "/firecracker.log"
	jailMetrics   = "/firecracker.metrics"
	jailKernel    = "/vmlinux"
	jailInitrd    = "/initrd"
)

// Jail is the chroot of one jailed Firecracker. Jailer runs without
// --new-pid-ns, so it execs Firecracker in place: the pid the driver
// started is Firecracker's, and no pid file is involved (Paths.PIDFile is
// empty).
type Jail struct {
	// Dir is <ChrootBase>/<exec file name>/<id>, removed when the VMM is
	// gone; Root is Dir/root, the chroot.
	Dir, Root string
	// Cgroup is the cgroup jailer creates under the cgroup v2 mount:
	// <exec file name>/<id> (the parent defaults to the exec file name).
	Cgroup string
	// Host are the host-side paths of the API socket, vsock socket, log
	// and metrics, all under Root.
	Host Paths
	// Inner are the same files as Firecracker names them (under "/"); Plan
	// is given Inner.
	Inner Paths
}

// JailFor returns the layout jailer creates for id when it runs execFile
// under base.
func JailFor(base, execFile, id string) Jail {
	exe := filepath.Base(execFile)
	dir := filepath.Join(base, exe, id)
	root := filepath.Join(dir, "root")
	inner := Paths{API: jailAPISocket, Vsock: jailVsock, Log: jailLog, Metrics: jailMetrics}
	host := func(p string) string { return filepath.Join(root, p) }
	return Jail{Dir: dir, Root: root, Cgroup: exe + "/" + id, Inner: inner,
		Host: Paths{API: host(inner.API), Vsock: host(inner.Vsock), Log: host(inner.Log), Metrics: host(inner.Metrics)}}
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
// chroot (jailer passes --id itself). The uid/gid must be non-root;
// jailer copies execFile into the chroot and execs it in place.
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
	return append(args, "--", "--api-sock", jailAPISocket), nil
}

// Link is one hard link to make into a jail.
type Link struct {
	Src, Dst string // host paths; Dst is under Jail.Root
	// Chown: the file is the VM's own (its initrd, a writable drive) and
	// the jailed user must read or write it. Shared read-only artefacts
	// are not chowned: a hard link shares the inode, so chowning a shared
	// kernel would hand it to the jail user; they must be world-readable.
	Chown bool
}

// JailSpec rewrites spec's kernel, initrd and disks to their names inside
// j, and returns the links that put them there. Disk i is /drive<i>. The
// initrd is taken to be the VM's own (kiln builds one per VM, holding the
// VM's keys), so it is chowned with the writable drives.
func JailSpec(spec vmm.Spec, j Jail) (vmm.Spec, []Link) {
	var links []Link
	add := func(src, inner string, chown bool) string {
		links = append(links, Link{Src: src, Dst: filepath.Join(j.Root, inner), Chown: chown})
		return inner
	}
	out := spec
	out.Kernel = add(spec.Kernel, jailKernel, false)
	if spec.Initrd != "" {
		out.Initrd = add(spec.Initrd, jailInitrd, true)
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

// checkReadable refuses a link that is not chowned and that uid:gid could
// not read: the jailed Firecracker would fail later with a vaguer error.
func checkReadable(l Link, uid, gid int) error {
	if l.Chown {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(l.Src, &st); err != nil {
		return api.Errorf(api.ErrBadRequest, "jailer: %s: %v", l.Src, err)
	}
	ok := st.Mode&0o004 != 0 || (int(st.Uid) == uid && st.Mode&0o400 != 0) || (int(st.Gid) == gid && st.Mode&0o040 != 0)
	if !ok {
		return api.Hinted(api.Errorf(api.ErrFailedPrecondition,
			"jailer: %s (mode %#o, owner %d:%d) is not readable by the jail user %d:%d", l.Src, st.Mode&0o777, st.Uid, st.Gid, uid, gid),
			"make it world-readable (chmod o+r); kiln's kernel store writes kernels 0644")
	}
	return nil
}

// Cgroup2Mount returns where a mount table (/proc/mounts) has the cgroup v2
// hierarchy: /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts;
// "" when none is mounted.
func Cgroup2Mount(mounts []byte) string {
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[2] == "cgroup2" {
			return f[1]
		}
	}
	return ""
}

// removeJail removes j's directory and the cgroup jailer made for it. The
// VMM must be gone. A cgroup is empty only once the last of the VMM's
// processes has left it, which can trail the VMM's exit a little, so a
// busy cgroup is retried for a short while, then reported, not forced.
func removeJail(j Jail) error {
	var errs []error
	if err := os.RemoveAll(j.Dir); err != nil {
		errs = append(errs, fmt.Errorf("jailer: remove chroot: %w", err))
	}
	if mounts, err := os.ReadFile("/proc/mounts"); err == nil && Cgroup2Mount(mounts) != "" {
		dir := filepath.Join(Cgroup2Mount(mounts), j.Cgroup)
		deadline := time.Now().Add(2 * time.Second)
		err := unix.Rmdir(dir)
		for errors.Is(err, unix.EBUSY) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			err = unix.Rmdir(dir)
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("jailer: remove cgroup %s: %w", j.Cgroup, err))
		}
	}
	return errors.Join(errs...)
}
