package kernel

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/kilnvm/kiln/internal/api"
)

// Prefixes of the store's transient directories. Names start with a dot,
// which a valid kernel name cannot, so they never collide with kernels.
const (
	stagingPrefix  = ".staging-"
	removingPrefix = ".removing-"
	downloadPrefix = ".download-"
)

// input is a Source resolved to files on disk.
type input struct {
	vmlinuz, modulesDir, release, desc string
}

// Import stores the kernel src under name and builds its base initramfs.
// An existing name is api.ErrAlreadyExists; a bad name, a missing file or
// a package without a kernel is api.ErrBadRequest. On failure nothing is
// left behind.
func (s *Store) Import(ctx context.Context, name string, src Source) (Kernel, error) {
	if err := api.ValidateName("kernel", name); err != nil {
		return Kernel{}, err
	}
	if err := src.validate(); err != nil {
		return Kernel{}, err
	}
	final := s.kernelDir(name)
	if _, err := os.Lstat(final); err == nil {
		return Kernel{}, fmt.Errorf("kernel %q: %w", name, api.ErrAlreadyExists)
	}
	if err := s.ensureDir(); err != nil {
		return Kernel{}, err
	}
	start := s.now()
	staging, err := os.MkdirTemp(s.dir, stagingPrefix+name+"-")
	if err != nil {
		return Kernel{}, fmt.Errorf("import kernel %q: %w", name, err)
	}
	defer os.RemoveAll(staging) // a no-op once renamed into place

	in, err := s.resolveSource(ctx, src, staging)
	if err != nil {
		return Kernel{}, fmt.Errorf("import kernel %q: %w", name, err)
	}
	k, err := s.build(ctx, name, src, in, staging)
	if err != nil {
		return Kernel{}, fmt.Errorf("import kernel %q from %s: %w", name, in.desc, err)
	}
	if err := os.Rename(staging, final); err != nil {
		if errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) {
			return Kernel{}, fmt.Errorf("kernel %q: %w", name, api.ErrAlreadyExists)
		}
		return Kernel{}, fmt.Errorf("import kernel %q: %w", name, err)
	}
	syncDir(s.dir)
	k.Dir = final
	s.logger.Info("kernel imported", "kernel", name, "release", k.Release, "source", k.Source,
		"format", k.Format, "modules", len(k.Modules), "initramfs_bytes", k.InitramfsSize,
		"duration", time.Since(start).Round(time.Millisecond))
	return k, nil
}

func (src Source) validate() error {
	n := 0
	if src.Deb != "" {
		n++
	}
	if src.Vmlinuz != "" {
		n++
	}
	if src.FromHost {
		n++
	}
	if src.ModulesDir != "" && src.Vmlinuz == "" {
		return fmt.Errorf("kernel source: a modules directory needs a kernel image (Vmlinuz): %w", api.ErrBadRequest)
	}
	if n != 1 {
		return fmt.Errorf("kernel source: give exactly one of a .deb, a kernel image or the host kernel (got %d): %w", n, api.ErrBadRequest)
	}
	for _, m := range src.Modules {
		if m == "" || strings.ContainsAny(m, "/\x00 ") {
			return fmt.Errorf("kernel source: invalid module name %q: %w", m, api.ErrBadRequest)
		}
	}
	return nil
}

// resolveSource turns src into files; a .deb is unpacked under staging.
func (s *Store) resolveSource(ctx context.Context, src Source, staging string) (input, error) {
	var in input
	switch {
	case src.Deb != "":
		deb, err := filepath.Abs(src.Deb)
		if err != nil {
			return in, err
		}
		tree := filepath.Join(staging, "deb")
		if err := extractDeb(ctx, s.runner, deb, tree); err != nil {
			return in, err
		}
		in.vmlinuz, in.modulesDir, in.release, err = findKernelTree(tree, "kernel package "+deb)
		if err != nil {
			return in, err
		}
		in.desc = "deb:" + deb
	case src.FromHost:
		rel, err := s.hostRelease()
		if err != nil {
			return in, err
		}
		root := s.hostRoot()
		in.vmlinuz = filepath.Join(root, "boot", "vmlinuz-"+rel)
		in.modulesDir = filepath.Join(root, "lib", "modules", rel)
		in.release = rel
		in.desc = "host:" + in.vmlinuz
	default:
		in.vmlinuz, in.modulesDir = src.Vmlinuz, src.ModulesDir
		in.desc = "file:" + in.vmlinuz
	}
	if fi, err := os.Stat(in.vmlinuz); err != nil {
		return in, fileError("kernel image", in.vmlinuz, err)
	} else if !fi.Mode().IsRegular() {
		return in, fmt.Errorf("kernel image %s is not a regular file: %w", in.vmlinuz, api.ErrBadRequest)
	}
	if in.modulesDir != "" {
		if fi, err := os.Stat(in.modulesDir); err != nil {
			return in, fileError("modules directory", in.modulesDir, err)
		} else if !fi.IsDir() {
			return in, fmt.Errorf("modules directory %s is not a directory: %w", in.modulesDir, api.ErrBadRequest)
		}
	}
	if src.Description != "" {
		in.desc = src.Description
	}
	return in, nil
}

// build fills staging with the kernel's files and returns its metadata.
func (s *Store) build(ctx context.Context, name string, src Source, in input, staging string) (Kernel, error) {
	format, err := DetectFormat(in.vmlinuz)
	if err != nil {
		return Kernel{}, err
	}
	imgRelease, err := imageRelease(in.vmlinuz, format)
	if err != nil {
		return Kernel{}, err
	}
	roots := src.Modules
	if roots == nil {
		roots = DefaultModules()
	}
	var mods []Module
	release := in.release
	if in.modulesDir != "" {
		mods, err = ResolveModules(ctx, in.modulesDir, roots)
		if err != nil {
			return Kernel{}, err
		}
		// The modules say which kernel they were built for; a directory
		// of another kernel would fail to load at boot, far from here.
		for _, m := range mods {
			r := m.Info.Release()
			if release == "" {
				release = r
			}
			if r != release {
				return Kernel{}, fmt.Errorf("module %s is built for kernel %q, not %q: %w", m.File, r, release, api.ErrBadRequest)
			}
		}
		if release == "" {
			release = filepath.Base(in.modulesDir)
		}
	} else {
		roots = []string{} // nothing resolved: the kernel must have them built in
	}
	if release == "" {
		release = imgRelease
	}
	if imgRelease != "" && release != imgRelease {
		return Kernel{}, fmt.Errorf("kernel image %s is release %q but its modules are for %q: %w", in.vmlinuz, imgRelease, release, api.ErrBadRequest)
	}

	k := Kernel{
		Name:        name,
		Release:     release,
		Source:      in.desc,
		Format:      format,
		RootModules: roots,
		Modules:     make([]string, len(mods)),
		Created:     s.now().UTC(),
	}
	for i, m := range mods {
		k.Modules[i] = m.Name
	}

	k.InitramfsSize, k.InitramfsSHA256, err = writeFileAtomic(filepath.Join(staging, InitramfsFile), func(w io.Writer) error {
		return writeInitramfs(ctx, w, in.modulesDir, release, mods)
	})
	if err != nil {
		return Kernel{}, fmt.Errorf("build initramfs: %w", err)
	}
	k.VmlinuzSize, k.VmlinuzSHA256, err = writeFileAtomic(filepath.Join(staging, VmlinuzFile), func(w io.Writer) error {
		f, err := os.Open(in.vmlinuz)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(w, f)
		return err
	})
	if err != nil {
		return Kernel{}, fmt.Errorf("copy kernel image: %w", err)
	}
	meta, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return Kernel{}, err
	}
	if _, _, err := writeFileAtomic(filepath.Join(staging, MetadataFile), func(w io.Writer) error {
		_, err := w.Write(append(meta, '\n'))
		return err
	}); err != nil {
		return Kernel{}, fmt.Errorf("write %s: %w", MetadataFile, err)
	}
	// The unpacked package is big (the whole modules tree) and no part of
	// the kernel: drop it before the rename.
	if err := os.RemoveAll(filepath.Join(staging, "deb")); err != nil {
		return Kernel{}, err
	}
	syncDir(staging)
	return k, nil
}

// writeFileAtomic creates path (which must not exist), lets fill write it
// through a buffer, syncs it, and returns its size and sha256.
func writeFileAtomic(path string, fill func(io.Writer) error) (int64, string, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, "", err
	}
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(f, h)}
	bw := bufio.NewWriterSize(cw, 1<<20)
	err = fill(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, "", err
	}
	return cw.n, hex.EncodeToString(h.Sum(nil)), nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// syncDir makes renames in dir durable; failure only weakens durability,
// so it is not reported.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// Get returns the kernel called name, or an error wrapping api.ErrNotFound.
func (s *Store) Get(ctx context.Context, name string) (Kernel, error) {
	if err := api.ValidateName("kernel", name); err != nil {
		return Kernel{}, err
	}
	return s.load(name)
}

func (s *Store) load(name string) (Kernel, error) {
	dir := s.kernelDir(name)
	data, err := os.ReadFile(filepath.Join(dir, MetadataFile))
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(dir); serr == nil {
			return Kernel{}, fmt.Errorf("kernel %q: %s is missing from %s", name, MetadataFile, dir)
		}
		return Kernel{}, fmt.Errorf("kernel %q: %w", name, api.ErrNotFound)
	}
	if err != nil {
		return Kernel{}, fmt.Errorf("kernel %q: %w", name, err)
	}
	var k Kernel
	if err := json.Unmarshal(data, &k); err != nil {
		return Kernel{}, fmt.Errorf("kernel %q: parse %s: %w", name, MetadataFile, err)
	}
	k.Dir = dir
	return k, nil
}

// List returns every stored kernel, sorted by name. A kernel whose
// metadata cannot be read is logged and left out, so one damaged entry
// does not hide the others.
func (s *Store) List(ctx context.Context) ([]Kernel, error) {
	ents, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list kernels: %w", err)
	}
	var out []Kernel
	for _, e := range ents {
		if !e.IsDir() || api.ValidateName("kernel", e.Name()) != nil {
			continue // staging and removal leftovers start with a dot
		}
		k, err := s.load(e.Name())
		if err != nil {
			s.logger.Warn("skipping unreadable kernel", "kernel", e.Name(), "err", err)
			continue
		}
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Remove deletes the kernel called name (api.ErrNotFound when absent). It
// first renames the directory away, so a concurrent Get sees the kernel
// whole or not at all. The caller checks that no VM uses it.
func (s *Store) Remove(ctx context.Context, name string) error {
	if err := api.ValidateName("kernel", name); err != nil {
		return err
	}
	dir := s.kernelDir(name)
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("kernel %q: %w", name, api.ErrNotFound)
	}
	tmp, err := os.MkdirTemp(s.dir, removingPrefix+name+"-")
	if err != nil {
		return fmt.Errorf("remove kernel %q: %w", name, err)
	}
	gone := filepath.Join(tmp, name)
	if err := os.Rename(dir, gone); err != nil {
		os.Remove(tmp)
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("kernel %q: %w", name, api.ErrNotFound)
		}
		return fmt.Errorf("remove kernel %q: %w", name, err)
	}
	syncDir(s.dir)
	if err := os.RemoveAll(tmp); err != nil {
		// The kernel is gone for every reader; Reconcile finishes the job.
		s.logger.Warn("kernel removed but files remain", "kernel", name, "dir", tmp, "err", err)
	}
	s.logger.Info("kernel removed", "kernel", name)
	return nil
}

// Reconcile removes what interrupted imports, pulls and removals left
// behind. Call it at daemon start-up, before any import runs.
func (s *Store) Reconcile(ctx context.Context) error {
	ents, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reconcile kernels: %w", err)
	}
	var errs []error
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, stagingPrefix) || strings.HasPrefix(n, removingPrefix) || strings.HasPrefix(n, downloadPrefix) {
			if err := os.RemoveAll(filepath.Join(s.dir, n)); err != nil {
				errs = append(errs, err)
				continue
			}
			s.logger.Info("removed leftover kernel files", "dir", n)
		}
	}
	return errors.Join(errs...)
}
