package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// SparseCopy clones by copying only the data regions of the source (found
// with SEEK_DATA/SEEK_HOLE) and leaving holes for the rest, including
// blocks of zeros inside data regions. It works on every filesystem that
// supports sparse files; its cost grows with the data in the image.
type SparseCopy struct{}

var _ Backend = SparseCopy{}

// Name implements Backend.
func (SparseCopy) Name() string { return "copy" }

// Probe implements Backend: the only requirement is that files can be
// created in dir.
func (SparseCopy) Probe(ctx context.Context, dir string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	_, clean, err := probeFile(dir, "copy")
	if err != nil {
		return err
	}
	clean()
	return nil
}

// Clone implements Backend.
func (SparseCopy) Clone(ctx context.Context, src, dst string) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
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
	if err := CopySparse(ctx, out, in, fi.Size()); err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("sync copy %s: %w", dst, err)
	}
	return nil
}

// Remove implements Backend.
func (SparseCopy) Remove(ctx context.Context, path string) error { return removeFile(path) }

// sparseBlock is the unit in which runs of zeros become holes. 4 KiB is the
// block size of every filesystem kiln meets, so smaller runs would not save
// anything.
const sparseBlock = 4096

// CopySparse copies the first size bytes of src into dst (which should be
// empty), writing only data regions and leaving holes for the rest and for
// whole blocks of zeros. It checks ctx between chunks.
func CopySparse(ctx context.Context, dst, src *os.File, size int64) error {
	buf := make([]byte, 1<<20)
	srcFd := int(src.Fd())
	for off := int64(0); off < size; {
		start, err := unix.Seek(srcFd, off, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			start = size // no data after off: the rest is a hole
		case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP):
			start = off // no SEEK_DATA here: treat everything as data
		case err != nil:
			return fmt.Errorf("seek data: %w", err)
		}
		if start >= size {
			break
		}
		end, err := unix.Seek(srcFd, start, unix.SEEK_HOLE)
		if err != nil {
			end = size
		}
		if end > size {
			end = size
		}
		for p := start; p < end; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := int64(len(buf))
			if end-p < n {
				n = end - p
			}
			if _, err := src.ReadAt(buf[:n], p); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read at %d: %w", p, err)
			}
			if err := WriteSparseAt(dst, buf[:n], p); err != nil {
				return err
			}
			p += n
		}
		off = end
	}
	if err := dst.Truncate(size); err != nil {
		return fmt.Errorf("set size: %w", err)
	}
	return nil
}

// WriteSparseAt writes b at off in dst, skipping whole 4 KiB blocks of
// zeros so that, in a file that had nothing there, they stay holes.
func WriteSparseAt(dst *os.File, b []byte, off int64) error {
	for i := 0; i < len(b); {
		j := i + sparseBlock
		if j > len(b) {
			j = len(b)
		}
		if isZero(b[i:j]) {
			i = j
			continue
		}
		// Extend the run over following non-zero blocks: fewer syscalls.
		for j < len(b) {
			k := j + sparseBlock
			if k > len(b) {
				k = len(b)
			}
			if isZero(b[j:k]) {
				break
			}
			j = k
		}
		if _, err := dst.WriteAt(b[i:j], off+int64(i)); err != nil {
			return fmt.Errorf("write at %d: %w", off+int64(i), err)
		}
		i = j
	}
	return nil
}

// isZero reports whether b holds only zeros: b is all zeros when its first
// byte is zero and every byte equals the next, which bytes.Equal checks at
// memory speed without a zero buffer to compare against.
func isZero(b []byte) bool {
	return len(b) == 0 || (b[0] == 0 && bytes.Equal(b[1:], b[:len(b)-1]))
}
