package image

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/disk"
)

// Register records the ext4 root filesystem at the host path rootfs as the
// image name without copying it: an unmanaged image. The image directory
// holds image.json and rootfs.ext4 as a symbolic link to rootfs; kiln never
// writes to or deletes rootfs (Remove deletes only the link), and VMs get
// their own copy-on-write clone of it as of their creation. No agent is
// injected (the agent comes with each VM's initrd), so the agent stays PID
// 1 in its VMs. The file must exist, be a regular ext4 filesystem and lie
// outside the store.
func (s *Store) Register(ctx context.Context, name, rootfs, kernelName string) (Image, error) {
	if err := api.ValidateName("image", name); err != nil {
		return Image{}, err
	}
	if kernelName != "" {
		if err := api.ValidateName("kernel", kernelName); err != nil {
			return Image{}, err
		}
	}
	if !filepath.IsAbs(rootfs) {
		return Image{}, fmt.Errorf("register image %q: rootfs %q is not an absolute path: %w", name, rootfs, api.ErrBadRequest)
	}
	rootfs = filepath.Clean(rootfs)
	if within(rootfs, s.dir) {
		return Image{}, fmt.Errorf("register image %q: %s is inside the image store: %w", name, rootfs, api.ErrBadRequest)
	}
	size, err := checkExt4File(rootfs)
	if err != nil {
		return Image{}, fmt.Errorf("register image %q: %w", name, err)
	}
	if _, err := os.Lstat(filepath.Join(s.dir, name)); err == nil {
		return Image{}, fmt.Errorf("image %q: %w", name, api.ErrAlreadyExists)
	}
	staging, err := os.MkdirTemp(s.dir, stagingPrefix+name+"-")
	if err != nil {
		return Image{}, fmt.Errorf("register image %q: %w", name, err)
	}
	committed := false
	defer func() {
		if !committed {
			os.RemoveAll(staging) // a link and a JSON file: never follows the link
		}
	}()
	img := Image{Name: name, Source: "register:" + rootfs, SizeBytes: size, Created: s.now().UTC(),
		KernelName: kernelName, Unmanaged: rootfs}
	if err := os.Symlink(rootfs, filepath.Join(staging, RootFSFile)); err != nil {
		return Image{}, fmt.Errorf("register image %q: %w", name, err)
	}
	if err := writeJSON(filepath.Join(staging, MetadataFile), img); err != nil {
		return Image{}, fmt.Errorf("register image %q: %w", name, err)
	}
	if err := syncPath(staging); err != nil {
		return Image{}, fmt.Errorf("register image %q: %w", name, err)
	}
	if err := s.commit(ctx, staging, name); err != nil {
		return Image{}, err
	}
	committed = true
	img.RootFS = filepath.Join(s.dir, name, RootFSFile)
	s.log.Info("image: registered", "image", name, "rootfs", rootfs, "size", size)
	return img, nil
}

// Promote copies the root filesystem of the unmanaged image name into the
// store (a sparse copy), so the image no longer depends on the host file,
// which is left as it is. The copy replaces the link by one rename, then
// image.json is rewritten the same way; a crash between the two leaves a
// managed file that a second Promote copies again. Promoting a managed
// image is api.ErrFailedPrecondition.
func (s *Store) Promote(ctx context.Context, name string) (Image, error) {
	img, err := s.Get(ctx, name)
	if err != nil {
		return Image{}, err
	}
	if img.Unmanaged == "" {
		return Image{}, fmt.Errorf("promote image %q: it is already in managed storage: %w", name, api.ErrFailedPrecondition)
	}
	dir := filepath.Join(s.dir, name)
	tmp := filepath.Join(dir, RootFSFile+".promote")
	defer os.Remove(tmp) // gone after the rename; left only on failure
	if err := (disk.SparseCopy{}).Clone(ctx, img.Unmanaged, tmp); err != nil {
		return Image{}, fmt.Errorf("promote image %q: copy %s: %w", name, img.Unmanaged, err)
	}
	if err := syncPath(tmp); err != nil {
		return Image{}, fmt.Errorf("promote image %q: %w", name, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, RootFSFile)); err != nil {
		return Image{}, fmt.Errorf("promote image %q: %w", name, err)
	}
	from := img.Unmanaged
	img.Unmanaged, img.Source = "", "promoted:"+from
	meta := filepath.Join(dir, MetadataFile)
	os.Remove(meta + ".tmp")
	if err := writeJSON(meta+".tmp", img); err != nil {
		return Image{}, fmt.Errorf("promote image %q: %w", name, err)
	}
	if err := os.Rename(meta+".tmp", meta); err != nil {
		return Image{}, fmt.Errorf("promote image %q: %w", name, err)
	}
	if err := syncPath(dir); err != nil {
		return Image{}, fmt.Errorf("promote image %q: %w", name, err)
	}
	s.log.Info("image: promoted", "image", name, "from", from)
	return s.Get(ctx, name)
}

// checkExt4File returns the size of the regular file p after checking that
// it holds an ext2/3/4 superblock (magic 0xEF53 at byte 1080).
func checkExt4File(p string) (int64, error) {
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("rootfs %s: %w", p, api.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("rootfs %s: %w", p, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("rootfs %s: %w", p, err)
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("rootfs %s: not a regular file: %w", p, api.ErrBadRequest)
	}
	var magic [2]byte
	if _, err := f.ReadAt(magic[:], 1080); err != nil && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("rootfs %s: %w", p, err)
	}
	if binary.LittleEndian.Uint16(magic[:]) != 0xEF53 {
		return 0, fmt.Errorf("rootfs %s: not an ext4 filesystem: %w", p, api.ErrBadRequest)
	}
	return fi.Size(), nil
}
