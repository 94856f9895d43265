package firecracker

import (
	"context"
	"fmt"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/kernel"
)

// KernelFormatSupport records which x86_64 kernel image formats a range of
// Firecracker releases boots.
type KernelFormatSupport struct {
	From    Release // first release of the range (inclusive)
	Formats []kernel.Format
	// Source says where the entry comes from and how sure it is.
	Source string
}

// KernelFormats is the table, oldest first; each entry holds until the next.
//
// Every release boots an uncompressed ELF vmlinux on x86_64. bzImage
// direct boot is firecracker-microvm/firecracker pull request #6037
// ("feat(kernel): support bzImage direct boot on x86_64"), merged on
// 2026-07-17, after v1.16.1 was released; which release first ships it is
// an assumption (the next minor, 1.17.0) until its changelog says so. An
// unknown release older than that gets the ELF vmlinux, which every
// release boots, so the assumption can only cost an extraction, never a
// boot.
func KernelFormats() []KernelFormatSupport {
	return []KernelFormatSupport{
		{From: Release{0, 0, 0}, Formats: []kernel.Format{kernel.FormatELF},
			Source: "docs/rootfs-and-kernel-setup.md up to v1.16: x86_64 loads an uncompressed ELF vmlinux only"},
		{From: Release{1, 17, 0}, Formats: []kernel.Format{kernel.FormatELF, kernel.FormatBzImage},
			Source: "firecracker PR #6037 (merged 2026-07-17, after v1.16.1); first release assumed to be 1.17.0"},
	}
}

// AcceptsKernel reports whether release r boots a kernel image of format f.
func AcceptsKernel(r Release, f kernel.Format) bool {
	var formats []kernel.Format
	for _, e := range KernelFormats() {
		if !r.Less(e.From) {
			formats = e.Formats
		}
	}
	for _, g := range formats {
		if g == f {
			return true
		}
	}
	return false
}

// release returns the binary's version, read once.
func (d *Driver) release(ctx context.Context) (Release, error) {
	d.mu.Lock()
	r, ok := d.rel, d.relKnown
	d.mu.Unlock()
	if ok {
		return r, nil
	}
	r, err := d.readVersion(ctx)
	if err != nil {
		return Release{}, err
	}
	d.mu.Lock()
	d.rel, d.relKnown = r, true
	d.mu.Unlock()
	return r, nil
}

// bootKernel returns the kernel image to hand Firecracker for path: path
// itself when this release boots its format, else the ELF vmlinux
// Config.ELFKernel extracts from it.
func (d *Driver) bootKernel(ctx context.Context, name, path string) (string, error) {
	format, err := kernel.DetectFormat(path)
	if err != nil {
		return "", fmt.Errorf("vm %q: %w", name, err)
	}
	r, err := d.release(ctx)
	if err != nil {
		return "", err
	}
	if AcceptsKernel(r, format) {
		return path, nil
	}
	if format != kernel.FormatBzImage || d.elfKernel == nil {
		return "", api.Hinted(api.Errorf(api.ErrFailedPrecondition, "vm %q: firecracker %s does not boot a %s kernel image (%s)", name, r, format, path),
			"import an ELF vmlinux as the kernel (`kiln kernel import --vmlinuz vmlinux`)")
	}
	elfPath, err := d.elfKernel(ctx, path)
	if err != nil {
		return "", fmt.Errorf("vm %q: firecracker %s needs an ELF vmlinux: %w", name, r, err)
	}
	d.log.Info("booting the extracted ELF vmlinux", "vm", name, "firecracker", r.String(), "vmlinux", elfPath)
	return elfPath, nil
}
