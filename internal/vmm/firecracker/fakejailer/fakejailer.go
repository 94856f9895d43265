// Package fakejailer is a TEST-ONLY FAKE of Firecracker's jailer. NEVER
// INSTALL IT, NEVER POINT A PRODUCTION jailer_binary AT IT: it exists so
// kiln's Firecracker driver can be exercised through a jailer on hosts
// that have neither Firecracker, its jailer nor KVM.
//
// It follows the "Jailer Operation" section of Firecracker's
// docs/jailer.md, in order: validate the arguments (and refuse any flag it
// does not implement), close inherited descriptors, clear the environment,
// create <chroot_base>/<exec_file_name>/<id>/root, copy the exec file into
// it, set resource limits, create the cgroup v2 <parent_cgroup>/<id>
// (parent defaults to the exec file name), write the --cgroup values and
// its own pid there, unshare a mount namespace, pivot_root into the chroot,
// mknod /dev/net/tun and /dev/kvm, chown the chroot to uid:gid, drop to
// uid:gid and exec /<exec_file_name> --id=<id> --start-time-us=<n>
// --start-time-cpu-us=<n> followed by the arguments after "--", in the same
// process (same pid). Only cgroup v2 is implemented; --daemonize,
// --new-pid-ns and --netns are refused.
//
// ONE DELIBERATE DEVIATION from the real jailer: kiln's Firecracker stand-in
// (fcemu) boots guests with the host's dynamically linked QEMU, so before
// pivot_root this fake bind-mounts, read-only, the host's /usr and /etc
// (and recreates the /bin, /sbin, /lib, /lib64 symlinks, or bind-mounts
// them where they are directories), the device nodes /dev/null, /dev/zero,
// /dev/full, /dev/random and /dev/urandom, and mounts a /proc. The mounts
// live only in the jail's private mount namespace (the host sees empty
// mount-point directories in the chroot, nothing mounted). A real jailed
// Firecracker (static, KVM) needs none of this.
package fakejailer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Args are the jailer's command-line arguments.
type Args struct {
	ID           string
	ExecFile     string
	UID, GID     int
	ParentCgroup string // default: the exec file name
	// CgroupVersion is 1 or 2 (jailer's default is 1; only 2 is implemented).
	CgroupVersion  int
	Cgroups        []string // "file=value"
	ChrootBase     string   // default /srv/jailer
	ResourceLimits []string // "fsize=n" or "no-file=n"
	Extra          []string // after "--", forwarded to the exec file
}

var (
	idRE     = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)
	cgroupRE = regexp.MustCompile(`^([a-z0-9_]+)\.[a-z0-9_.]+=(.+)$`)
	rlimitRE = regexp.MustCompile(`^(fsize|no-file)=([0-9]+)$`)
)

// Parse parses and validates the arguments (argv without the program
// name). It touches nothing on the host beyond stat of the exec file.
func Parse(argv []string) (Args, error) {
	a := Args{CgroupVersion: 1, ChrootBase: "/srv/jailer", UID: -1, GID: -1}
	seen := map[string]bool{}
	for i := 0; i < len(argv); i++ {
		arg := argv[i]
		if arg == "--" {
			a.Extra = append([]string(nil), argv[i+1:]...)
			break
		}
		if !strings.HasPrefix(arg, "--") {
			return a, fmt.Errorf("unexpected argument %q (arguments for firecracker go after --)", arg)
		}
		name, val, hasVal := strings.Cut(arg[2:], "=")
		switch name {
		case "daemonize", "new-pid-ns", "netns":
			return a, fmt.Errorf("--%s is not implemented by this test-only fake jailer", name)
		case "id", "exec-file", "uid", "gid", "parent-cgroup", "cgroup-version", "cgroup", "chroot-base-dir", "resource-limit":
		default:
			return a, fmt.Errorf("unknown flag --%s", name)
		}
		if !hasVal {
			if i+1 >= len(argv) {
				return a, fmt.Errorf("--%s needs a value", name)
			}
			i++
			val = argv[i]
		}
		if seen[name] && name != "cgroup" && name != "resource-limit" {
			return a, fmt.Errorf("--%s given twice", name)
		}
		seen[name] = true
		var err error
		switch name {
		case "id":
			a.ID = val
		case "exec-file":
			a.ExecFile = val
		case "uid":
			a.UID, err = strconv.Atoi(val)
		case "gid":
			a.GID, err = strconv.Atoi(val)
		case "parent-cgroup":
			a.ParentCgroup = val
		case "cgroup-version":
			a.CgroupVersion, err = strconv.Atoi(val)
		case "cgroup":
			a.Cgroups = append(a.Cgroups, val)
		case "chroot-base-dir":
			a.ChrootBase = val
		case "resource-limit":
			a.ResourceLimits = append(a.ResourceLimits, val)
		}
		if err != nil {
			return a, fmt.Errorf("--%s %q: not a number", name, val)
		}
	}
	return a, a.validate()
}

func (a Args) validate() error {
	for _, f := range []string{"id", "exec-file", "uid", "gid"} {
		if (f == "id" && a.ID == "") || (f == "exec-file" && a.ExecFile == "") ||
			(f == "uid" && a.UID == -1) || (f == "gid" && a.GID == -1) {
			return fmt.Errorf("missing required flag --%s", f)
		}
	}
	if !idRE.MatchString(a.ID) {
		return fmt.Errorf("invalid --id %q: want 1-64 characters of [A-Za-z0-9-]", a.ID)
	}
	if a.UID < 0 || a.GID < 0 || a.UID > 1<<32-2 || a.GID > 1<<32-2 {
		return fmt.Errorf("invalid --uid/--gid %d/%d", a.UID, a.GID)
	}
	if !filepath.IsAbs(a.ExecFile) {
		return fmt.Errorf("--exec-file %q is not an absolute path", a.ExecFile)
	}
	if !strings.Contains(filepath.Base(a.ExecFile), "firecracker") {
		return fmt.Errorf("--exec-file %q: the file name must contain \"firecracker\"", a.ExecFile)
	}
	if st, err := os.Stat(a.ExecFile); err != nil {
		return fmt.Errorf("--exec-file: %w", err)
	} else if !st.Mode().IsRegular() {
		return fmt.Errorf("--exec-file %q is not a regular file", a.ExecFile)
	}
	if !filepath.IsAbs(a.ChrootBase) {
		return fmt.Errorf("--chroot-base-dir %q is not an absolute path", a.ChrootBase)
	}
	if a.ParentCgroup != "" && (filepath.IsAbs(a.ParentCgroup) || !filepath.IsLocal(a.ParentCgroup)) {
		return fmt.Errorf("--parent-cgroup %q must be a relative path inside the hierarchy", a.ParentCgroup)
	}
	switch a.CgroupVersion {
	case 1:
		if len(a.Cgroups) > 0 {
			return errors.New("--cgroup with cgroup v1 is not implemented by this test-only fake jailer (use --cgroup-version 2)")
		}
	case 2:
	default:
		return fmt.Errorf("invalid --cgroup-version %d: want 1 or 2", a.CgroupVersion)
	}
	for _, c := range a.Cgroups {
		if !cgroupRE.MatchString(c) {
			return fmt.Errorf("invalid --cgroup %q: want <cgroup_file>=<value>, e.g. cpu.max=50000 100000", c)
		}
	}
	for _, r := range a.ResourceLimits {
		if !rlimitRE.MatchString(r) {
			return fmt.Errorf("invalid --resource-limit %q: want fsize=<n> or no-file=<n>", r)
		}
	}
	return nil
}

// ExecName is the exec file's name: the chroot's and cgroup's parent dir.
func (a Args) ExecName() string { return filepath.Base(a.ExecFile) }

// ChrootDir is <chroot_base>/<exec_file_name>/<id>/root.
func (a Args) ChrootDir() string {
	return filepath.Join(a.ChrootBase, a.ExecName(), a.ID, "root")
}

// CgroupDir is the v2 cgroup the process is put in, under the cgroup2
// mount mnt.
func (a Args) CgroupDir(mnt string) string {
	parent := a.ParentCgroup
	if parent == "" {
		parent = a.ExecName()
	}
	return filepath.Join(mnt, parent, a.ID)
}

// Cgroup2Mount returns the mount point of the cgroup2 hierarchy listed in
// mounts (the contents of /proc/mounts).
func Cgroup2Mount(mounts string) (string, error) {
	for _, line := range strings.Split(mounts, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "cgroup2" {
			return f[1], nil
		}
	}
	return "", errors.New("no cgroup2 hierarchy in /proc/mounts")
}

// Run does the jailer's work and execs the exec file in this process. It
// returns only on failure. The caller must have locked its OS thread
// (runtime.LockOSThread): the mount namespace, root and working directory
// are per thread, and the exec happens from the same thread.
func Run(a Args) error {
	startUS := time.Now().UnixMicro()
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	startCPUUS := ru.Utime.Sec*1e6 + ru.Utime.Usec + ru.Stime.Sec*1e6 + ru.Stime.Usec

	if err := closeInheritedFDs(); err != nil {
		return err
	}
	os.Clearenv()

	root := a.ChrootDir()
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("create chroot dir: %w", err)
	}
	name := a.ExecName()
	if err := copyFile(a.ExecFile, filepath.Join(root, name)); err != nil {
		return fmt.Errorf("copy exec file into the chroot: %w", err)
	}
	if err := setRlimits(a.ResourceLimits); err != nil {
		return err
	}
	if a.CgroupVersion == 2 {
		if err := joinCgroup2(a); err != nil {
			return err
		}
	}
	if err := buildJail(root); err != nil {
		return err
	}
	for _, dev := range []struct {
		path         string
		major, minor uint32
	}{{"/dev/net/tun", 10, 200}, {"/dev/kvm", 10, 232}} {
		if err := os.MkdirAll(filepath.Dir(dev.path), 0o755); err != nil {
			return fmt.Errorf("mknod %s: %w", dev.path, err)
		}
		if err := unix.Mknod(dev.path, unix.S_IFCHR|0o600, int(unix.Mkdev(dev.major, dev.minor))); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("mknod %s: %w", dev.path, err)
		}
		if err := os.Chown(dev.path, a.UID, a.GID); err != nil {
			return fmt.Errorf("chown %s: %w", dev.path, err)
		}
	}
	if err := os.Chown("/", a.UID, a.GID); err != nil {
		return fmt.Errorf("chown the chroot: %w", err)
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(a.GID); err != nil {
		return fmt.Errorf("setgid %d: %w", a.GID, err)
	}
	if err := syscall.Setuid(a.UID); err != nil {
		return fmt.Errorf("setuid %d: %w", a.UID, err)
	}
	argv := append([]string{"/" + name, "--id=" + a.ID,
		"--start-time-us=" + strconv.FormatInt(startUS, 10),
		"--start-time-cpu-us=" + strconv.FormatInt(startCPUUS, 10)}, a.Extra...)
	err := syscall.Exec("/"+name, argv, []string{})
	return fmt.Errorf("exec /%s: %w", name, err)
}

// closeInheritedFDs marks every descriptor but 0, 1 and 2 close-on-exec
// (closing them outright would pull the Go runtime's own from under it).
func closeInheritedFDs() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("list open descriptors: %w", err)
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	os.Remove(dst)
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, 0o755)
}

func setRlimits(limits []string) error {
	nofile := uint64(2048) // jailer's default bound
	for _, l := range limits {
		m := rlimitRE.FindStringSubmatch(l)
		n, _ := strconv.ParseUint(m[2], 10, 64)
		if m[1] == "no-file" {
			nofile = n
			continue
		}
		if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: n, Max: n}); err != nil {
			return fmt.Errorf("setrlimit fsize=%d: %w", n, err)
		}
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: nofile, Max: nofile}); err != nil {
		return fmt.Errorf("setrlimit no-file=%d: %w", nofile, err)
	}
	return nil
}

// joinCgroup2 creates <mnt>/<parent>/<id>, enables the controllers the
// --cgroup files need in the ancestors, writes the values and moves this
// process in. Controllers are checked before anything is created.
func joinCgroup2(a Args) error {
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return fmt.Errorf("read /proc/mounts: %w", err)
	}
	mnt, err := Cgroup2Mount(string(mounts))
	if err != nil {
		return err
	}
	avail, err := os.ReadFile(filepath.Join(mnt, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("read cgroup controllers: %w", err)
	}
	var ctrls []string
	for _, c := range a.Cgroups {
		ctrl := cgroupRE.FindStringSubmatch(c)[1]
		if ctrl == "cgroup" {
			continue // core interface files need no controller
		}
		if !strings.Contains(" "+strings.TrimSpace(string(avail))+" ", " "+ctrl+" ") {
			return fmt.Errorf("--cgroup %s: cgroup v2 controller %q is not available at %s (cgroup.controllers: %q)",
				c, ctrl, mnt, strings.TrimSpace(string(avail)))
		}
		ctrls = append(ctrls, ctrl)
	}
	dir := a.CgroupDir(mnt)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create cgroup: %w", err)
	}
	// Enable the controllers from the mount down to the parent.
	for _, ctrl := range ctrls {
		rel, _ := filepath.Rel(mnt, filepath.Dir(dir))
		p := mnt
		for _, part := range append([]string{""}, strings.Split(rel, "/")...) {
			p = filepath.Join(p, part)
			if err := os.WriteFile(filepath.Join(p, "cgroup.subtree_control"), []byte("+"+ctrl), 0); err != nil {
				return fmt.Errorf("enable controller %s in %s: %w", ctrl, p, err)
			}
		}
	}
	for _, c := range a.Cgroups {
		file, val, _ := strings.Cut(c, "=")
		path := filepath.Join(dir, file)
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("--cgroup %s: no such cgroup file %s", c, path)
		}
		if err := os.WriteFile(path, []byte(val), 0); err != nil {
			return fmt.Errorf("--cgroup %s: write %s: %w", c, path, err)
		}
	}
	procs := filepath.Join(dir, "cgroup.procs")
	if err := os.WriteFile(procs, []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		return fmt.Errorf("join cgroup %s: %w", dir, err)
	}
	return nil
}

// buildJail enters a new mount namespace rooted at root, as the jailer
// does, after binding in what fcemu's QEMU needs.
func buildJail(root string) error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_PRIVATE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	if err := unix.Mount(root, root, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind the chroot onto itself: %w", err)
	}
	if err := bindHost(root); err != nil {
		return err
	}
	old := filepath.Join(root, "old_root")
	if err := os.MkdirAll(old, 0o700); err != nil {
		return fmt.Errorf("create old_root: %w", err)
	}
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("chdir to the chroot: %w", err)
	}
	if err := unix.PivotRoot(".", "old_root"); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount("old_root", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount old_root: %w", err)
	}
	if err := os.Remove("old_root"); err != nil {
		return fmt.Errorf("remove old_root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	return nil
}

// bindHost is the deviation: host /usr, /etc, ..., device nodes and a
// /proc, inside the (already private) jail namespace.
func bindHost(root string) error {
	// Bound read-only; a host symlink (merged /usr) is recreated instead.
	for _, p := range []string{"/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64"} {
		st, err := os.Lstat(p)
		if err != nil {
			continue
		}
		dst := filepath.Join(root, p)
		if st.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("read host symlink %s: %w", p, err)
			}
			os.Remove(dst)
			if err := os.Symlink(target, dst); err != nil {
				return fmt.Errorf("recreate symlink %s: %w", p, err)
			}
			continue
		}
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fmt.Errorf("create mount point %s: %w", dst, err)
		}
		if err := bindRO(p, dst, unix.MS_REC); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
		return fmt.Errorf("create /dev: %w", err)
	}
	for _, d := range []string{"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"} {
		dst := filepath.Join(root, d)
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_RDONLY, 0o644)
		if err != nil {
			return fmt.Errorf("create mount point %s: %w", dst, err)
		}
		f.Close()
		if err := unix.Mount(d, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", d, err)
		}
	}
	proc := filepath.Join(root, "proc")
	if err := os.MkdirAll(proc, 0o555); err != nil {
		return fmt.Errorf("create /proc: %w", err)
	}
	if err := unix.Mount("proc", proc, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		// Where a fresh proc may not be mounted, the host's will do.
		if err2 := unix.Mount("/proc", proc, "", unix.MS_BIND|unix.MS_REC, ""); err2 != nil {
			return fmt.Errorf("mount /proc: %v; bind: %w", err, err2)
		}
	}
	return nil
}

func bindRO(src, dst string, extra uintptr) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND|extra, ""); err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("remount %s read-only: %w", dst, err)
	}
	return nil
}
