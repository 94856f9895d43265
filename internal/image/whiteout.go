package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// OCI layer whiteouts (image-spec layer.md, "Whiteouts").
const (
	whiteoutPrefix = ".wh."
	// whiteoutMeta prefixes the special whiteout names; only the opaque
	// marker is defined for OCI layers.
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// ApplyLayer unpacks one OCI image layer (a tar stream) on top of what
// earlier layers made, honouring whiteouts: an entry "dir/.wh.name" deletes
// dir/name (and everything below it) as made by earlier layers, and
// "dir/.wh..wh..opq" empties dir of everything earlier layers put in it.
// Entries of the same layer are never hidden by its own whiteouts, in
// whatever order they come. A non-directory entry replaces a directory of
// an earlier layer, as container runtimes do. Whiteout entries themselves
// are never written into the tree. Every removal resolves inside the tree
// (RESOLVE_IN_ROOT), like every write.
//
// Layers must be applied oldest first.
func (x *Extractor) ApplyLayer(ctx context.Context, r io.Reader) error {
	x.layer = map[string]bool{}
	defer func() { x.layer = nil }()
	return x.Apply(ctx, r)
}

// whiteout handles name if it is a whiteout entry of an OCI layer; handled
// is false for an ordinary entry.
func (x *Extractor) whiteout(hdr *tar.Header, name string) (handled bool, err error) {
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	if !strings.HasPrefix(base, whiteoutPrefix) {
		return false, nil
	}
	x.stats.Whiteouts++
	switch {
	case base == whiteoutOpaque:
		return true, x.opaque(hdr, dir)
	case strings.HasPrefix(base, whiteoutMeta):
		return true, badEntry(hdr, "unknown whiteout marker %q", base)
	}
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if victim == "" || victim == "." || victim == ".." {
		return true, badEntry(hdr, "whiteout of %q names no file", victim)
	}
	target := path.Join(dir, victim)
	if x.layer[target] {
		return true, nil // made by this very layer: whiteouts hide only lower layers
	}
	dirfd, err := x.root.openDir(dir)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return true, nil // nothing there to hide
	}
	if err != nil {
		return true, badEntry(hdr, "whiteout directory %q: %v", dir, err)
	}
	defer unix.Close(dirfd)
	if err := removeAllAt(dirfd, victim); err != nil {
		return true, fmt.Errorf("archive entry %q: whiteout %q: %w", hdr.Name, target, err)
	}
	x.forget(target)
	return true, nil
}

// opaque empties dir of everything that earlier layers made in it.
func (x *Extractor) opaque(hdr *tar.Header, dir string) error {
	pfd, err := x.root.mkdirAll(dir)
	if err != nil {
		return badEntry(hdr, "opaque directory %q: %v", dir, describeNotDir(err))
	}
	defer unix.Close(pfd)
	names, err := readDirNames(pfd)
	if err != nil {
		return fmt.Errorf("archive entry %q: read %q: %w", hdr.Name, dir, err)
	}
	for _, n := range names {
		child := path.Join(dir, n)
		if x.layer[child] {
			continue
		}
		if err := removeAllAt(pfd, n); err != nil {
			return fmt.Errorf("archive entry %q: opaque %q: %w", hdr.Name, child, err)
		}
		x.forget(child)
	}
	return nil
}

// forget drops hard link targets at or below the removed name p.
func (x *Extractor) forget(p string) {
	for k := range x.regular {
		if k == p || strings.HasPrefix(k, p+"/") {
			delete(x.regular, k)
		}
	}
}

// readDirNames lists the directory dirfd (an O_PATH descriptor is fine).
func readDirNames(dirfd int) ([]string, error) {
	fd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), ".")
	defer f.Close()
	return f.Readdirnames(-1)
}

// removeAllAt deletes name in dirfd and, if it is a directory, everything
// below it, never following a symlink: each level is opened with
// O_NOFOLLOW relative to its parent's descriptor. A missing name is not an
// error.
func removeAllAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	names, err := readDirNames(fd)
	if err == nil {
		for _, n := range names {
			if err = removeAllAt(fd, n); err != nil {
				break
			}
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}
