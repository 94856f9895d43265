// Package kernel keeps the guest kernels kiln boots and builds the base
// initramfs each one needs.
//
// A kernel lives in <dir>/<name>/ of a Store:
//
//	vmlinuz         the kernel image as given (bzImage or ELF vmlinux)
//	initramfs.cpio  the base initramfs: the modules a kiln guest needs, at
//	                /lib/modules/<release>/..., uncompressed, and
//	                proto.ModulesListPath naming them in load order
//	kernel.json     metadata (Kernel)
//	vmlinux         the ELF vmlinux extracted from a bzImage, made on first
//	                use by ELFImage (for Firecracker releases without
//	                bzImage support)
//
// The base initramfs holds no /init: the daemon appends a second cpio
// archive with the agent as /init and the per-VM config, and the kernel
// unpacks both. Modules are chosen by reading each module's ELF .modinfo
// (depends=, softdep=), so any distribution kernel works without depmod or
// modprobe on the host or in the guest.
//
// Imports are built in a staging directory beside the target and renamed
// into place, so a kernel is either complete or absent; a failure or a
// crash leaves at most a dot-named staging directory, which List ignores
// and Reconcile removes.
package kernel

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/lockorder"
	"github.com/kilnvm/kiln/internal/system"
)

// File names inside a kernel's directory.
const (
	VmlinuzFile   = "vmlinuz"
	InitramfsFile = "initramfs.cpio"
	MetadataFile  = "kernel.json"
)

// Kernel is a stored kernel: the contents of its kernel.json.
type Kernel struct {
	Name    string `json:"name"`
	Release string `json:"release"` // uname -r of the guest, e.g. 6.1.0-9-amd64
	// Source says where the kernel came from, for people: "deb:linux-image-….deb",
	// "debian:linux-image-6.1.0-9-amd64=6.1.27-1", "host:/boot/vmlinuz-…", "file:…".
	Source string `json:"source"`
	Format Format `json:"format"`
	// RootModules is the module set asked for; Modules is what resolution
	// chose, in load order (built-in modules are not listed).
	RootModules     []string  `json:"root_modules"`
	Modules         []string  `json:"modules"`
	VmlinuzSize     int64     `json:"vmlinuz_size"`
	VmlinuzSHA256   string    `json:"vmlinuz_sha256"`
	InitramfsSize   int64     `json:"initramfs_size"`
	InitramfsSHA256 string    `json:"initramfs_sha256"`
	Created         time.Time `json:"created"`

	// Dir is the kernel's directory; it is not stored.
	Dir string `json:"-"`
}

// Artifacts is what a VMM needs to boot a kernel.
type Artifacts struct {
	Vmlinuz   string // absolute path of the kernel image
	Initramfs string // absolute path of the base initramfs (no /init)
	Release   string
	Format    Format
}

// Artifacts returns the boot view of k.
func (k Kernel) Artifacts() Artifacts {
	return Artifacts{
		Vmlinuz:   filepath.Join(k.Dir, VmlinuzFile),
		Initramfs: filepath.Join(k.Dir, InitramfsFile),
		Release:   k.Release,
		Format:    k.Format,
	}
}

// Source says where Import takes a kernel from. Set exactly one of Deb,
// Vmlinuz or FromHost.
type Source struct {
	// Deb is a linux-image .deb package.
	Deb string
	// Vmlinuz is a kernel image file (bzImage or ELF vmlinux), with
	// ModulesDir its lib/modules/<release> directory. ModulesDir may be
	// empty for a kernel with everything kiln needs built in (as
	// Firecracker's guest kernels are); nothing can check that claim
	// before the guest boots.
	Vmlinuz    string
	ModulesDir string
	// FromHost takes the running kernel: /boot/vmlinuz-$(uname -r) and
	// /lib/modules/$(uname -r) under Store.HostRoot.
	FromHost bool

	// Modules overrides the root module set; nil means DefaultModules().
	Modules []string
	// Description, if set, replaces the generated Kernel.Source text.
	Description string
}

// Store keeps kernels under one directory. Its methods are safe for
// concurrent use: every change is a rename, which the filesystem orders.
type Store struct {
	// Immutable after construction.
	dir    string
	runner system.Runner
	logger *slog.Logger

	// elfMu serialises ELF vmlinux extractions (ELFImage); a leaf lock.
	elfMu lockorder.Mutex

	// Seams, set before first use. Zero values mean the real host.

	// HostRoot is the root directory FromHost reads boot/ and lib/modules/
	// under; "" means "/".
	HostRoot string
	// HostRelease returns the release of the running kernel; nil means
	// uname(2).
	HostRelease func() (string, error)
	// Now stamps Kernel.Created; nil means time.Now.
	Now func() time.Time
	// DebianMetaPackage is the package PullDebian follows to the current
	// kernel; "" means linux-image-amd64.
	DebianMetaPackage string
}

// NewStore returns a Store keeping kernels under dir. dir is created on
// first import.
func NewStore(dir string, runner system.Runner, logger *slog.Logger) *Store {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Store{dir: dir, runner: runner, logger: logger}
}

// Dir is the directory the store keeps kernels in.
func (s *Store) Dir() string { return s.dir }

func (s *Store) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Store) hostRoot() string {
	if s.HostRoot == "" {
		return "/"
	}
	return s.HostRoot
}

func (s *Store) hostRelease() (string, error) {
	if s.HostRelease != nil {
		return s.HostRelease()
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// Artifacts returns the boot view of the kernel called name.
func (s *Store) Artifacts(ctx context.Context, name string) (Artifacts, error) {
	k, err := s.Get(ctx, name)
	if err != nil {
		return Artifacts{}, err
	}
	return k.Artifacts(), nil
}

// kernelDir is the directory of a (validated) name.
func (s *Store) kernelDir(name string) string { return filepath.Join(s.dir, name) }

// ensureDir creates the store directory; kernels are not secret, but only
// root may change them.
func (s *Store) ensureDir() error {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("create kernel store %s: %w", s.dir, err)
	}
	return nil
}
