package kernel

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/system"
)

// DebianPackage is the concrete kernel package the Debian metapackage
// currently points to.
type DebianPackage struct {
	Meta    string // the metapackage followed, e.g. linux-image-amd64
	Package string // e.g. linux-image-6.1.0-9-amd64
	Version string // e.g. 6.1.27-1
}

func (p DebianPackage) String() string {
	return fmt.Sprintf("debian:%s=%s", p.Package, p.Version)
}

func (s *Store) debianMeta() string {
	if s.DebianMetaPackage != "" {
		return s.DebianMetaPackage
	}
	return "linux-image-amd64"
}

// PullDebianSource asks the host's apt which kernel package PullDebian
// would fetch, for messages ("pulling linux-image-6.1.0-9-amd64 6.1.27-1").
func (s *Store) PullDebianSource(ctx context.Context) (DebianPackage, error) {
	meta := s.debianMeta()
	out, err := system.Command(ctx, s.runner, "apt-cache", "depends", meta)
	if err != nil {
		return DebianPackage{}, fmt.Errorf("find the kernel package of %s: %w", meta, err)
	}
	pkg, err := parseAptDepends(out)
	if err != nil {
		return DebianPackage{}, fmt.Errorf("find the kernel package of %s: %w", meta, err)
	}
	out, err = system.Command(ctx, s.runner, "apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		return DebianPackage{}, fmt.Errorf("find the version of %s: %w", pkg, err)
	}
	ver := ""
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Version:"); ok {
			ver = strings.TrimSpace(v)
			break
		}
	}
	if ver == "" {
		return DebianPackage{}, fmt.Errorf("apt-cache show %s gave no version", pkg)
	}
	return DebianPackage{Meta: meta, Package: pkg, Version: ver}, nil
}

// parseAptDepends picks the kernel image package out of `apt-cache
// depends` output ("  Depends: linux-image-6.1.0-9-amd64").
func parseAptDepends(out []byte) (string, error) {
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		// "|Depends:" marks an alternative; "<pkg>" a virtual package.
		if len(f) == 2 && strings.TrimPrefix(f[0], "|") == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("no linux-image-* dependency in apt-cache output %q: %w", strings.TrimSpace(string(out)), api.ErrUnavailable)
}

// PullDebian fetches the Debian kernel package the metapackage points to
// with the host's apt (`apt-get download`) and imports it as name.
func (s *Store) PullDebian(ctx context.Context, name string) (Kernel, error) {
	if err := api.ValidateName("kernel", name); err != nil {
		return Kernel{}, err
	}
	// Fail before a 60 MB download, not after it.
	if _, err := os.Lstat(s.kernelDir(name)); err == nil {
		return Kernel{}, fmt.Errorf("kernel %q: %w", name, api.ErrAlreadyExists)
	}
	pkg, err := s.PullDebianSource(ctx)
	if err != nil {
		return Kernel{}, err
	}
	if err := s.ensureDir(); err != nil {
		return Kernel{}, err
	}
	tmp, err := os.MkdirTemp(s.dir, downloadPrefix+name+"-")
	if err != nil {
		return Kernel{}, fmt.Errorf("pull kernel %q: %w", name, err)
	}
	defer os.RemoveAll(tmp)
	s.logger.Info("downloading kernel package", "kernel", name, "package", pkg.Package, "version", pkg.Version)
	if _, err := s.runner.Run(ctx, system.Cmd{
		Name: "apt-get",
		Args: []string{"download", "-q", pkg.Package + "=" + pkg.Version},
		Dir:  tmp,
	}); err != nil {
		return Kernel{}, fmt.Errorf("pull kernel %q: download %s: %w", name, pkg.Package, err)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return Kernel{}, fmt.Errorf("pull kernel %q: apt-get download %s left %d .deb files, want 1", name, pkg.Package, len(debs))
	}
	return s.Import(ctx, name, Source{Deb: debs[0], Description: pkg.String()})
}
