package testutil

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// gitRootfsPackages are the packages the git rootfs fixture adds to a
// debootstrap minbase: git itself (with its dependencies) and make.
const gitRootfsPackages = "git,make"

// GitRootfsTar returns a tarball of a Debian bookworm minbase root
// filesystem with git and make, built once with debootstrap from the host's
// Debian mirror and cached under CacheDir, keyed by suite and packages. It
// has no systemd, so the kiln agent stays PID 1 and a VM boots about as
// fast as from the busybox fixture. The first build takes a minute or two.
func GitRootfsTar(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	RequireCommand(t, "debootstrap")
	key := "bookworm-" + strings.ReplaceAll(gitRootfsPackages, ",", "+")
	path := filepath.Join(CacheDir(t), "git-rootfs-v1-"+key+".tar")
	WithLock(t, "git-rootfs", func() error {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		mirror, err := hostDebianMirror()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		dir, err := os.MkdirTemp(CacheDir(t), "git-rootfs-build-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		target := filepath.Join(dir, "root")
		cmd := exec.CommandContext(ctx, "debootstrap", "--variant=minbase",
			"--include="+gitRootfsPackages, "bookworm", target, mirror)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("debootstrap: %v\n%s", err, tail(out, 4000))
		}
		// Package caches and lists only make the image bigger.
		for _, p := range []string{"var/cache/apt/archives", "var/lib/apt/lists"} {
			_ = os.RemoveAll(filepath.Join(target, p))
		}
		tmp := path + ".tmp"
		cmd = exec.CommandContext(ctx, "tar", "-C", target, "--numeric-owner", "-cf", tmp, ".")
		if out, err := cmd.CombinedOutput(); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("tar the git rootfs: %v\n%s", err, out)
		}
		return os.Rename(tmp, path)
	})
	return path
}

// hostDebianMirror is the first Debian archive URL in the host's apt
// sources (deb822 or one-line format).
func hostDebianMirror() (string, error) {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	files = append([]string{"/etc/apt/sources.list"}, files...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			fields := strings.Fields(line)
			for i, fld := range fields {
				if !strings.HasPrefix(fld, "http://") && !strings.HasPrefix(fld, "https://") {
					continue
				}
				if (i > 0 && (fields[0] == "URIs:" || fields[0] == "deb")) && strings.HasSuffix(strings.TrimSuffix(fld, "/"), "/debian") {
					return fld, nil
				}
			}
		}
	}
	return "", fmt.Errorf("no Debian mirror in the host's apt sources")
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
