package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// writeTreeTar writes the tree under dir as a tar stream to w, keeping what
// a root filesystem needs: owners, modes, times, device nodes, fifos, hard
// links (by inode) and extended attributes. Symlinks are stored, never
// followed. Like `tar --one-file-system`, it lists a directory that is
// another filesystem's mount point but not its content, so importing a
// tree with /proc mounted does not copy the host's proc. Sockets are
// skipped: they cannot be carried in tar and mean nothing in an image.
func writeTreeTar(ctx context.Context, dir string, w io.Writer) error {
	var top unix.Stat_t
	if err := unix.Stat(dir, &top); err != nil {
		return fmt.Errorf("stat %s: %w", dir, err)
	}
	tw := tar.NewWriter(w)
	links := map[[2]uint64]string{} // (dev, inode) → first name, for hard links
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, werr error) error {
		if werr != nil {
			return werr
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		hdr := &tar.Header{
			Name:       rel,
			Mode:       int64(st.Mode & 0o7777),
			Uid:        int(st.Uid),
			Gid:        int(st.Gid),
			ModTime:    time.Unix(st.Mtim.Unix()),
			AccessTime: time.Unix(st.Atim.Unix()),
			Format:     tar.FormatPAX,
		}
		skipDir := false
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			hdr.Typeflag = tar.TypeDir
			hdr.Name = rel + "/"
			if rel == "." {
				hdr.Name = "./"
			}
			skipDir = st.Dev != top.Dev
		case unix.S_IFREG:
			key := [2]uint64{st.Dev, st.Ino}
			if first, ok := links[key]; ok && st.Nlink > 1 {
				hdr.Typeflag = tar.TypeLink
				hdr.Linkname = first
				break
			}
			if st.Nlink > 1 {
				links[key] = rel
			}
			hdr.Typeflag = tar.TypeReg
			hdr.Size = st.Size
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = target
		case unix.S_IFCHR, unix.S_IFBLK:
			hdr.Typeflag = tar.TypeChar
			if st.Mode&unix.S_IFMT == unix.S_IFBLK {
				hdr.Typeflag = tar.TypeBlock
			}
			hdr.Devmajor = int64(unix.Major(st.Rdev))
			hdr.Devminor = int64(unix.Minor(st.Rdev))
		case unix.S_IFIFO:
			hdr.Typeflag = tar.TypeFifo
		default:
			return nil // sockets
		}
		if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeDir {
			if err := addXattrs(p, hdr); err != nil {
				return err
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if err := copyFileInto(ctx, tw, p, hdr.Size); err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
		}
		if skipDir {
			return fs.SkipDir
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read tree %s: %w", dir, err)
	}
	return tw.Close()
}

func copyFileInto(ctx context.Context, w io.Writer, p string, size int64) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var n int64
	for n < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		k, err := f.Read(buf[:min(int64(len(buf)), size-n)])
		if k > 0 {
			if _, werr := w.Write(buf[:k]); werr != nil {
				return werr
			}
			n += int64(k)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if n != size {
		return fmt.Errorf("file changed while being read: %d of %d bytes", n, size)
	}
	return nil
}

// addXattrs records p's extended attributes as SCHILY.xattr PAX records,
// the form GNU tar and the Extractor use.
func addXattrs(p string, hdr *tar.Header) error {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz == 0 {
		if errors.Is(err, unix.ENOTSUP) {
			return nil
		}
		return err
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return err
	}
	names := strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00")
	sort.Strings(names)
	for _, name := range names {
		if name == "" {
			continue
		}
		vsz, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return fmt.Errorf("xattr %s: %w", name, err)
		}
		val := make([]byte, vsz)
		if vsz > 0 {
			if vsz, err = unix.Lgetxattr(p, name, val); err != nil {
				return fmt.Errorf("xattr %s: %w", name, err)
			}
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+name] = string(val[:vsz])
	}
	return nil
}
