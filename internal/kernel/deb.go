package kernel

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/system"
	"github.com/ulikunitz/xz"
)

const arMagic = "!<arch>\n"

// checkDeb fails with a bad_request unless path is a readable ar archive,
// so a wrong file is reported as the caller's mistake before any tool runs.
func checkDeb(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fileError("kernel package", path, err)
	}
	defer f.Close()
	var magic [len(arMagic)]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil || string(magic[:]) != arMagic {
		return fmt.Errorf("kernel package %s is not a Debian package (no ar header): %w", path, api.ErrBadRequest)
	}
	return nil
}

// extractDeb unpacks the kernel parts of a .deb into dest with dpkg-deb,
// or, where dpkg-deb is not installed, with the pure-Go reader.
func extractDeb(ctx context.Context, runner system.Runner, deb, dest string) error {
	if err := checkDeb(deb); err != nil {
		return err
	}
	_, err := system.Command(ctx, runner, "dpkg-deb", "-x", deb, dest)
	if err == nil {
		return nil
	}
	if !errors.Is(err, exec.ErrNotFound) {
		return fmt.Errorf("extract %s: %w", deb, err)
	}
	return extractDebGo(ctx, deb, dest)
}

// debKeep reports whether a package path is one kiln needs from a kernel
// package: the image in boot/ and the modules.
func debKeep(p string) bool {
	for _, pre := range []string{"boot/", "lib/modules/", "usr/lib/modules/"} {
		if strings.HasPrefix(p+"/", pre) || strings.HasPrefix(p, pre) {
			return true
		}
	}
	return false
}

// extractDebGo unpacks boot/ and lib/modules/ of a .deb (ar archive holding
// data.tar.{xz,gz,}) into dest. Only directories and regular files are
// written; links and devices are skipped (a kernel's modules need none),
// and any path leaving dest is an error.
func extractDebGo(ctx context.Context, deb, dest string) error {
	f, err := os.Open(deb)
	if err != nil {
		return fileError("kernel package", deb, err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	if _, err := br.Discard(len(arMagic)); err != nil {
		return fmt.Errorf("read %s: %w", deb, err)
	}
	for {
		var hdr [60]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("kernel package %s has no data.tar member: %w", deb, api.ErrBadRequest)
			}
			return fmt.Errorf("read %s: %w: %w", deb, err, api.ErrBadRequest)
		}
		if string(hdr[58:60]) != "`\n" {
			return fmt.Errorf("kernel package %s: corrupt ar member header: %w", deb, api.ErrBadRequest)
		}
		name := strings.TrimSuffix(strings.TrimSpace(string(hdr[0:16])), "/")
		size, err := strconv.ParseInt(strings.TrimSpace(string(hdr[48:58])), 10, 64)
		if err != nil || size < 0 {
			return fmt.Errorf("kernel package %s: corrupt ar member size: %w", deb, api.ErrBadRequest)
		}
		body := io.LimitReader(br, size)
		if strings.HasPrefix(name, "data.tar") {
			var tr io.Reader
			switch name {
			case "data.tar":
				tr = body
			case "data.tar.xz":
				xr, err := xz.NewReader(body)
				if err != nil {
					return fmt.Errorf("kernel package %s: %s: %w: %w", deb, name, err, api.ErrBadRequest)
				}
				tr = xr
			case "data.tar.gz":
				gr, err := gzip.NewReader(body)
				if err != nil {
					return fmt.Errorf("kernel package %s: %s: %w: %w", deb, name, err, api.ErrBadRequest)
				}
				defer gr.Close()
				tr = gr
			default:
				return fmt.Errorf("kernel package %s: %s is not supported without dpkg-deb (install dpkg): %w", deb, name, api.ErrNotImplemented)
			}
			return untarKernel(ctx, tr, dest, deb)
		}
		// ar members are padded to an even size.
		if _, err := br.Discard(int(size + size%2)); err != nil {
			return fmt.Errorf("read %s: %w", deb, err)
		}
	}
}

func untarKernel(ctx context.Context, r io.Reader, dest, deb string) error {
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("kernel package %s: read data.tar: %w: %w", deb, err, api.ErrBadRequest)
		}
		name := strings.TrimPrefix(h.Name, "./")
		if name == "" || name == "." {
			continue
		}
		clean := path.Clean(name)
		if path.IsAbs(name) || clean == ".." || strings.HasPrefix(clean, "../") {
			return fmt.Errorf("kernel package %s: entry %q leaves the package root: %w", deb, h.Name, api.ErrBadRequest)
		}
		if !debKeep(clean) {
			continue
		}
		target := filepath.Join(dest, filepath.FromSlash(clean))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
			if err != nil {
				return fmt.Errorf("kernel package %s: %w", deb, err)
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("kernel package %s: write %s: %w", deb, clean, err)
			}
		}
	}
}

// findKernelTree locates the image and modules directory in an unpacked
// kernel package: boot/vmlinuz-<release> (or vmlinux-) and
// lib/modules/<release> (or usr/lib/modules/<release>, merged /usr).
func findKernelTree(root, what string) (vmlinuz, modulesDir, release string, err error) {
	var images []string
	for _, pat := range []string{"vmlinuz-*", "vmlinux-*"} {
		m, _ := filepath.Glob(filepath.Join(root, "boot", pat))
		images = append(images, m...)
	}
	switch len(images) {
	case 0:
		return "", "", "", fmt.Errorf("%s holds no kernel (no boot/vmlinuz-*): %w", what, api.ErrBadRequest)
	case 1:
	default:
		return "", "", "", fmt.Errorf("%s holds several kernels (%s): %w", what, strings.Join(relAll(root, images), ", "), api.ErrBadRequest)
	}
	base := filepath.Base(images[0])
	release = base[len("vmlinuz-"):]
	for _, d := range []string{"lib/modules", "usr/lib/modules"} {
		p := filepath.Join(root, d, release)
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			return images[0], p, release, nil
		}
	}
	return "", "", "", fmt.Errorf("%s holds %s but no lib/modules/%s: %w", what, "boot/"+base, release, api.ErrBadRequest)
}

func relAll(root string, ps []string) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		r, err := filepath.Rel(root, p)
		if err != nil {
			r = p
		}
		out[i] = r
	}
	return out
}
