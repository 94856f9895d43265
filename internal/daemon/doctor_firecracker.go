package daemon

// `kiln doctor`'s jailer checks: with jailer_binary set, the jailer's
// version (against the minimum, the tested range and the Firecracker
// release), its uid/gid, the chroot base's filesystem and cgroup v2;
// without it, how Firecracker runs and how to jail it.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/config"
	"github.com/kilnvm/kiln/internal/system"
	"github.com/kilnvm/kiln/internal/vmm/firecracker"
)

// jailerHost is the host as the jailer checks read it; tests replace parts.
type jailerHost struct {
	runner   system.Runner
	lookPath func(string) (string, error)
	// userName returns the passwd name of uid, or an error when there is none.
	userName func(uid int) (string, error)
	// readFile reads /proc/mounts and cgroup.controllers files.
	readFile func(string) ([]byte, error)
	mounts   string // the mount table, "/proc/mounts"
}

// hostJailerView reads the real host.
func hostJailerView(r system.Runner) jailerHost {
	return jailerHost{
		runner:   r,
		lookPath: exec.LookPath,
		userName: func(uid int) (string, error) {
			u, err := user.LookupId(strconv.Itoa(uid))
			if err != nil {
				return "", err
			}
			return u.Username, nil
		},
		readFile: os.ReadFile,
		mounts:   "/proc/mounts",
	}
}

var jailerVersionRE = regexp.MustCompile(`Jailer v(\d+)\.(\d+)\.(\d+)`)

// parseJailerVersion reads the output of `jailer --version` ("Jailer v1.16.1").
func parseJailerVersion(out string) (firecracker.Release, error) {
	m := jailerVersionRE.FindStringSubmatch(out)
	if m == nil {
		first, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
		return firecracker.Release{}, fmt.Errorf("unrecognised jailer --version output %q", first)
	}
	var r firecracker.Release
	r.Major, _ = strconv.Atoi(m[1])
	r.Minor, _ = strconv.Atoi(m[2])
	r.Patch, _ = strconv.Atoi(m[3])
	return r, nil
}

// jailerChecks returns the jailer's doctor checks. fc is the Firecracker
// release (fcErr non-nil: unknown), which the jailer must match.
func jailerChecks(ctx context.Context, cfg config.Config, h jailerHost, fc firecracker.Release, fcErr error) []api.Check {
	if cfg.JailerBinary == "" {
		found := "no jailer on PATH"
		if p, err := h.lookPath("jailer"); err == nil {
			found = "jailer found at " + p
		}
		return []api.Check{{Name: "jailer", Status: "info",
			Detail: "not configured: Firecracker runs directly as root (" + found + "); to jail each Firecracker in a chroot as a non-root user with cgroup v2 limits, set jailer_binary, jailer_uid and jailer_gid (docs/configuration.md)"}}
	}
	out := []api.Check{jailerVersionCheck(ctx, cfg, h, fc, fcErr), jailerUserCheck(cfg, h)}
	chroot := api.Check{Name: "jailer chroot", Status: "pass"}
	state := existingParent(cfg.StateDir)
	if err := firecracker.CheckSameFilesystem(cfg.ChrootBase(), state); err != nil {
		chroot.Status, chroot.Detail = "fail", err.Error()
		chroot.Fix = "set jailer_chroot_base to a directory on the filesystem of state_dir (" + cfg.StateDir + ")"
	} else {
		chroot.Detail = cfg.ChrootBase() + " is on the filesystem of " + state + ": VM artefacts are hard-linked into each jail"
	}
	return append(out, chroot, cgroupCheck(cfg, h))
}

// jailerVersionCheck finds the jailer and checks its release.
func jailerVersionCheck(ctx context.Context, cfg config.Config, h jailerHost, fc firecracker.Release, fcErr error) api.Check {
	c := api.Check{Name: "jailer"}
	min := firecracker.MinRelease()
	lo, hi := firecracker.TestedRange()
	bin, err := h.lookPath(cfg.JailerBinary)
	if err != nil {
		c.Status, c.Detail = "fail", fmt.Sprintf("jailer_binary %q not found: %v", cfg.JailerBinary, err)
		c.Fix = "install the jailer from the Firecracker release you run (release-vX.Y.Z-<arch>/jailer-vX.Y.Z-<arch>), or unset jailer_binary"
		return c
	}
	raw, err := system.Command(ctx, h.runner, bin, "--version")
	var r firecracker.Release
	if err == nil {
		r, err = parseJailerVersion(string(raw))
	}
	if err != nil {
		c.Status, c.Detail = "fail", fmt.Sprintf("%s: read jailer version: %v", bin, err)
		c.Fix = "check that jailer_binary is Firecracker's jailer"
		return c
	}
	c.Status = "pass"
	c.Detail = fmt.Sprintf("%s: jailer %s (minimum %s; tested %s-%s)", bin, r, min, lo, hi)
	var notes []string
	switch {
	case r.Less(min):
		c.Status = "fail"
		notes = append(notes, "older than the minimum")
		c.Fix = "install a jailer (and Firecracker) of release " + min.String() + " or newer"
	case r.Less(lo) || hi.Less(r):
		c.Status = "warn"
		notes = append(notes, "outside the tested range")
		c.Fix = "use a tested release, or run the e2e suite against this one (docs/firecracker.md)"
	}
	switch {
	case fcErr != nil:
		notes = append(notes, "Firecracker's version is unknown, so the releases cannot be compared")
	case r != fc:
		if c.Status == "pass" {
			c.Status = "warn"
		}
		notes = append(notes, fmt.Sprintf("Firecracker is %s: jailer and Firecracker must come from the same release", fc))
		c.Fix = "install the jailer and firecracker binaries of one release tarball"
	default:
		notes = append(notes, "same release as Firecracker")
	}
	c.Detail += "; " + strings.Join(notes, "; ")
	return c
}

// jailerUserCheck checks the uid and gid a jailed Firecracker runs as.
func jailerUserCheck(cfg config.Config, h jailerHost) api.Check {
	c := api.Check{Name: "jailer user"}
	if cfg.JailerUID <= 0 || cfg.JailerGID <= 0 {
		c.Status = "fail"
		c.Detail = fmt.Sprintf("jailer_uid %d / jailer_gid %d: a jailed Firecracker must not run as root", cfg.JailerUID, cfg.JailerGID)
		c.Fix = "create a system user (useradd --system --no-create-home kiln-fc) and set jailer_uid and jailer_gid to its ids"
		return c
	}
	c.Status = "pass"
	if name, err := h.userName(cfg.JailerUID); err == nil {
		c.Detail = fmt.Sprintf("uid %d (%s), gid %d", cfg.JailerUID, name, cfg.JailerGID)
	} else {
		c.Detail = fmt.Sprintf("uid %d (no passwd entry; the jailer uses the number), gid %d", cfg.JailerUID, cfg.JailerGID)
	}
	return c
}

// cgroupCheck finds a cgroup2 mount (the jailer runs --cgroup-version 2)
// and, for each jailer_cgroups setting, its controller there.
func cgroupCheck(cfg config.Config, h jailerHost) api.Check {
	c := api.Check{Name: "jailer cgroup"}
	mounts, err := h.readFile(h.mounts)
	if err != nil {
		c.Status, c.Detail = "fail", "read the mount table: "+err.Error()
		c.Fix = "mount /proc"
		return c
	}
	at := firecracker.Cgroup2Mount(mounts)
	if at == "" {
		c.Status, c.Detail = "fail", "no cgroup2 filesystem is mounted; the jailer runs with --cgroup-version 2"
		c.Fix = "boot with the unified cgroup hierarchy (systemd.unified_cgroup_hierarchy=1), or mount -t cgroup2 none /sys/fs/cgroup"
		return c
	}
	c.Status, c.Detail = "pass", "cgroup2 mounted at "+at
	var missing []string
	if len(cfg.JailerCgroups) > 0 {
		ctl, err := h.readFile(filepath.Join(at, "cgroup.controllers"))
		have := map[string]bool{}
		for _, n := range strings.Fields(string(ctl)) {
			have[n] = true
		}
		for _, s := range cfg.JailerCgroups {
			file, _, _ := strings.Cut(s, "=")
			ctlName, _, _ := strings.Cut(file, ".")
			if (err != nil || !have[ctlName]) && !slices.Contains(missing, ctlName) {
				missing = append(missing, ctlName)
			}
		}
	}
	if len(missing) > 0 {
		c.Status = "fail"
		c.Detail += fmt.Sprintf(", but controller(s) %s for jailer_cgroups are not available there (cgroup.controllers)", strings.Join(missing, ", "))
		c.Fix = "use the unified cgroup hierarchy so cpu and memory are cgroup v2 controllers (systemd.unified_cgroup_hierarchy=1), or drop those jailer_cgroups"
	}
	return c
}
