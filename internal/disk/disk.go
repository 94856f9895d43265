// Package disk prepares the block devices a VM boots from: copy-on-write
// clones of an image's root filesystem (through one of several backends,
// chosen per host by probing), empty ext4 work disks, growing a disk to a
// per-VM size, and reading ext4 images with debugfs.
//
// A backend is one way to clone a file. Each probes whether it can work for
// files in a given directory and, when it cannot, says why; Choose keeps every
// probe result so `kiln doctor` can show the backends that were passed over.
package disk

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/kilnvm/kiln/internal/api"
)

// Backend clones image files into per-VM disks.
//
// Implementations are safe for concurrent use; they hold no state beyond
// their configuration.
type Backend interface {
	// Name is the short name shown by `kiln doctor` ("reflink", "copy").
	Name() string
	// Probe returns nil when the backend can clone files that live in dir,
	// else an error whose text says why not, prefixed with the name
	// ("reflink: filesystem ext4 does not support FICLONE").
	Probe(ctx context.Context, dir string) error
	// Clone makes dst a copy of src that shares what it can with src; writes
	// to dst never change src. dst must not exist (api.ErrAlreadyExists,
	// and dst is left untouched); a missing src is api.ErrNotFound. On any
	// error, including ctx being cancelled, dst does not exist afterwards.
	Clone(ctx context.Context, src, dst string) error
	// Remove deletes a disk made by Clone. A disk that does not exist is not
	// an error, so rollback and reconcile can call it blindly.
	Remove(ctx context.Context, path string) error
}

// ProbeResult is the outcome of probing one backend.
type ProbeResult struct {
	Backend string
	// Err is nil when the backend is usable, else the reason it is not.
	Err error
}

// OK reports whether the backend is usable.
func (r ProbeResult) OK() bool { return r.Err == nil }

func (r ProbeResult) String() string {
	if r.Err == nil {
		return r.Backend + ": ok"
	}
	return fmt.Sprintf("%s: skip (%v)", r.Backend, r.Err)
}

// Choose probes backends in order for files in dir and returns the first
// usable one (nil when none is) together with every probe result. All
// backends are probed, even after one is chosen, so the report is complete.
func Choose(ctx context.Context, dir string, backends ...Backend) (Backend, []ProbeResult) {
	var chosen Backend
	results := make([]ProbeResult, 0, len(backends))
	for _, b := range backends {
		err := b.Probe(ctx, dir)
		results = append(results, ProbeResult{Backend: b.Name(), Err: err})
		if err == nil && chosen == nil {
			chosen = b
		}
	}
	return chosen, results
}

// openSource opens src for cloning, classing a missing file as not found.
func openSource(src string) (*os.File, os.FileInfo, error) {
	f, err := os.Open(src)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("clone source %s: %w", src, api.ErrNotFound)
		}
		return nil, nil, fmt.Errorf("open clone source: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("stat clone source: %w", err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("clone source %s is not a regular file: %w", src, api.ErrBadRequest)
	}
	return f, fi, nil
}

// createDest creates dst exclusively, so an existing file is never touched.
func createDest(dst string, perm os.FileMode) (*os.File, error) {
	f, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm.Perm())
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("clone destination %s: %w", dst, api.ErrAlreadyExists)
		}
		return nil, fmt.Errorf("create clone destination: %w", err)
	}
	return f, nil
}

// removeFile deletes a regular file; a missing one is fine.
func removeFile(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove disk: %w", err)
	}
	if fi.IsDir() {
		return fmt.Errorf("remove disk %s: is a directory: %w", path, api.ErrBadRequest)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove disk: %w", err)
	}
	return nil
}

// probeFile creates a scratch file in dir for a probe and returns it with a
// function that removes it.
func probeFile(dir, name string) (*os.File, func(), error) {
	f, err := os.CreateTemp(dir, ".kiln-probe-"+name+"-*")
	if err != nil {
		return nil, nil, fmt.Errorf("%s: cannot create files in %s: %w", name, dir, err)
	}
	return f, func() { f.Close(); os.Remove(f.Name()) }, nil
}
