package disk

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Reflink clones with the FICLONE ioctl: the clone shares every block with
// its source until either is written, so a clone is O(1) in the image size.
// It works on btrfs, xfs (with reflink=1, the default since xfsprogs 5.1),
// bcachefs and a few others, and only within one filesystem.
type Reflink struct{}

var _ Backend = Reflink{}

// Name implements Backend.
func (Reflink) Name() string { return "reflink" }

// Probe implements Backend: it clones a scratch file inside dir, because
// the filesystem type alone does not tell (xfs may be made without reflink).
func (r Reflink) Probe(ctx context.Context, dir string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("reflink: %w", err)
	}
	src, cleanSrc, err := probeFile(dir, "reflink")
	if err != nil {
		return err
	}
	defer cleanSrc()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return fmt.Errorf("reflink: write probe file: %w", err)
	}
	dst, cleanDst, err := probeFile(dir, "reflink")
	if err != nil {
		return err
	}
	defer cleanDst()
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		return fmt.Errorf("reflink: filesystem %s does not support FICLONE: %w", FSType(dir), err)
	}
	return nil
}

// Clone implements Backend.
func (r Reflink) Clone(ctx context.Context, src, dst string) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("reflink %s: %w", src, err)
	}
	in, fi, err := openSource(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := createDest(dst, fi.Mode())
	if err != nil {
		return err
	}
	defer func() {
		out.Close()
		if err != nil {
			os.Remove(dst)
		}
	}()
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		return fmt.Errorf("reflink %s to %s (filesystem %s): %w", src, dst, FSType(dst), err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("sync clone %s: %w", dst, err)
	}
	// The ioctl cannot be interrupted; a caller that gave up meanwhile
	// expects nothing to be left behind, so honour the cancel afterwards.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("reflink %s: %w", src, err)
	}
	return nil
}

// Remove implements Backend.
func (Reflink) Remove(ctx context.Context, path string) error { return removeFile(path) }

// fsName names the filesystems kiln is likely to meet, by statfs f_type.
func fsName(magic int64) string {
	switch magic {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	case unix.F2FS_SUPER_MAGIC:
		return "f2fs"
	case unix.FUSE_SUPER_MAGIC:
		return "fuse"
	case unix.V9FS_MAGIC:
		return "9p"
	case 0x2fc12fc1:
		return "zfs"
	case 0xca451a4e:
		return "bcachefs"
	}
	return fmt.Sprintf("0x%x", uint64(magic))
}

// FSType names the filesystem that holds path ("ext4", "btrfs", ...), or
// gives its magic number in hex when it is not a well-known one.
func FSType(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		// The path may not exist yet (a clone destination): ask its directory.
		if err2 := unix.Statfs(filepath.Dir(path), &st); err2 != nil {
			return "unknown"
		}
	}
	return fsName(int64(st.Type))
}
