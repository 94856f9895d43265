package vmm

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
)

// CheckFiles verifies that the kernel, initrd and disks a spec names can be
// opened and are not directories, so a typo fails with a clear bad_request
// instead of a VMM's exit.
func CheckFiles(spec Spec) error {
	check := func(what, path string) error {
		f, err := os.Open(path)
		if err != nil {
			return api.Errorf(api.ErrBadRequest, "vm %q: %s: %v", spec.Name, what, err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return api.Errorf(api.ErrBadRequest, "vm %q: %s: %v", spec.Name, what, err)
		}
		if fi.IsDir() {
			return api.Errorf(api.ErrBadRequest, "vm %q: %s %s is a directory", spec.Name, what, path)
		}
		return nil
	}
	if err := check("kernel", spec.Kernel); err != nil {
		return err
	}
	if spec.Initrd != "" {
		if err := check("initrd", spec.Initrd); err != nil {
			return err
		}
	}
	for i, disk := range spec.Disks {
		if err := check(fmt.Sprintf("disk %d", i), disk.Path); err != nil {
			return err
		}
	}
	return nil
}

// LogTail returns the last lines a VMM (named by what) wrote to its log
// after offset, joined on one line, for an error message.
func LogTail(what, path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no %s log: %v)", what, err)
	}
	defer f.Close()
	const max = 4096
	if fi, err := f.Stat(); err == nil && fi.Size()-offset > max {
		offset = fi.Size() - max
	}
	b, _ := io.ReadAll(io.NewSectionReader(f, offset, max))
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return fmt.Sprintf("(%s log is empty)", what)
	}
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, "; ")
}

// LookBinary finds a VMM binary (a path or a name on PATH). A missing one
// is failed_precondition, naming what and carrying hint.
func LookBinary(what, bin, hint string) (string, error) {
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", api.Hinted(fmt.Errorf("%s binary %q not found: %w: %w", what, bin, err, api.ErrFailedPrecondition), hint)
	}
	return p, nil
}
