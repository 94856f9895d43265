package image

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// removeTree deletes a staging or removed-image directory completely and
// safely. debootstrap mounts proc and sys inside its target and chroots
// processes into it; when it is killed (a cancelled build) those can
// outlive it. So first stop processes whose root is inside dir, then
// detach every mount under it, and only then delete files, so a delete can
// never walk into the host's /proc, /sys or /dev.
func removeTree(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(abs); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	if err := killRootedIn(abs); err != nil {
		errs = append(errs, err)
	}
	if err := unmountUnder(abs); err != nil {
		errs = append(errs, err)
		// Deleting with a mount still in place could delete through it.
		return errors.Join(errs...)
	}
	if err := os.RemoveAll(abs); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", abs, err))
	}
	return errors.Join(errs...)
}

// within reports whether p is dir or below it.
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// unmountUnder lazily unmounts every mount point at or below dir, deepest
// first, as listed in /proc/self/mountinfo.
func unmountUnder(dir string) error {
	points, err := mountPoints()
	if err != nil {
		return err
	}
	var under []string
	for _, p := range points {
		if within(p, dir) {
			under = append(under, p)
		}
	}
	sort.Slice(under, func(i, j int) bool { return len(under[i]) > len(under[j]) })
	var errs []error
	for _, p := range under {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

func mountPoints() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("list mounts: %w", err)
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 {
			points = append(points, unescapeMount(fields[4]))
		}
	}
	return points, sc.Err()
}

// unescapeMount undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// killRootedIn SIGKILLs every process whose root directory is dir or below
// it: the chrooted dpkg runs debootstrap leaves behind when killed.
func killRootedIn(dir string) error {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return fmt.Errorf("list processes: %w", err)
	}
	var errs []error
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		r, err := os.Readlink(filepath.Join("/proc", e.Name(), "root"))
		if err != nil || !within(r, dir) {
			continue
		}
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("kill %d (rooted in %s): %w", pid, r, err))
		}
	}
	return errors.Join(errs...)
}
