// Package cpio writes deterministic cpio archives in the "newc" (070701)
// format, the one the Linux kernel unpacks as an initramfs.
//
// Every entry is owned by root (uid/gid 0) with mtime 0 and inode numbers
// that count up from 1, so the same calls always produce the same bytes: a
// kernel's base initramfs and a VM's config archive can be compared and
// cached by hash. The kernel accepts several archives concatenated; kiln
// appends a per-VM archive after a kernel's base one.
//
// The writer does not create parent directories implicitly, because the
// kernel does not either (an entry whose parent is missing fails to unpack)
// and an appended archive may rely on directories of an earlier one; use
// MkdirAll where an archive must stand on its own.
package cpio

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
)

// Unix file type and permission bits as stored in a newc header.
const (
	modeDir     = 0o040000
	modeRegular = 0o100000
	modeSymlink = 0o120000
	modeSetuid  = 0o4000
	modeSetgid  = 0o2000
	modeSticky  = 0o1000

	headerLen = 110
	magic     = "070701"
	trailer   = "TRAILER!!!"
	// maxSize is the largest size a newc header can express (8 hex digits).
	maxSize = 1<<32 - 1
	// nulPad supplies the NULs that align names and data to 4 bytes.
	nulPad = "\x00\x00\x00"
)

// ErrClosed is returned by writes after Close.
var ErrClosed = errors.New("cpio: writer closed")

// Writer writes one newc archive. It is not safe for concurrent use.
type Writer struct {
	w      io.Writer
	ino    uint32
	names  map[string]bool // entries written so far, to reject duplicates
	err    error           // sticky: once the stream is broken, every call fails
	closed bool
}

// NewWriter returns a Writer writing an archive to w. Call Close to write
// the trailer; the caller closes w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w, names: make(map[string]bool)}
}

// WriteDir adds a directory. mode holds the permission bits (and may
// include os.ModeDir, setgid, sticky).
func (w *Writer) WriteDir(name string, mode os.FileMode) error {
	p, err := w.begin(name, mode, os.ModeDir)
	if err != nil {
		return err
	}
	return w.entry(p, modeDir|unixPerm(mode), 2, 0, nil)
}

// MkdirAll adds name and every ancestor of it that this Writer has not
// written yet, each with mode, parents first.
func (w *Writer) MkdirAll(name string, mode os.FileMode) error {
	p, err := cleanPath(name)
	if err != nil {
		return err
	}
	parts := strings.Split(p, "/")
	for i := range parts {
		dir := strings.Join(parts[:i+1], "/")
		if w.names[dir] {
			continue
		}
		if err := w.WriteDir(dir, mode); err != nil {
			return err
		}
	}
	return nil
}

// WriteFile adds a regular file holding data.
func (w *Writer) WriteFile(name string, mode os.FileMode, data []byte) error {
	return w.WriteFileFrom(name, mode, int64(len(data)), bytes.NewReader(data))
}

// WriteFileFrom adds a regular file of size bytes read from r. r must
// yield exactly size bytes; anything else is an error and leaves the
// archive unusable.
func (w *Writer) WriteFileFrom(name string, mode os.FileMode, size int64, r io.Reader) error {
	p, err := w.begin(name, mode, 0)
	if err != nil {
		return err
	}
	if size < 0 || size > maxSize {
		return fmt.Errorf("cpio: file %q: size %d out of range (0..%d): %w", p, size, int64(maxSize), api.ErrBadRequest)
	}
	return w.entry(p, modeRegular|unixPerm(mode), 1, size, r)
}

// WriteSymlink adds a symbolic link at name pointing to target. The target
// is stored as given: the kernel resolves it inside the guest.
func (w *Writer) WriteSymlink(name, target string) error {
	p, err := w.begin(name, 0o777, os.ModeSymlink)
	if err != nil {
		return err
	}
	if target == "" || strings.IndexByte(target, 0) >= 0 {
		return fmt.Errorf("cpio: symlink %q: invalid target %q: %w", p, target, api.ErrBadRequest)
	}
	return w.entry(p, modeSymlink|0o777, 1, int64(len(target)), strings.NewReader(target))
}

// Close writes the trailer entry. It does not close the underlying writer.
// The archive ends 4-byte aligned, so another archive may follow directly.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	if w.err != nil {
		w.closed = true
		return w.err
	}
	// The trailer carries inode 0 and nlink 1, as GNU cpio and the
	// kernel's gen_init_cpio write it.
	err := w.entry(trailer, 0, 1, 0, nil)
	w.closed = true
	return err
}

// begin checks the writer's state and the entry's name and mode, and
// returns the name as stored (relative, canonical).
func (w *Writer) begin(name string, mode, kind os.FileMode) (string, error) {
	if w.closed {
		return "", ErrClosed
	}
	if w.err != nil {
		return "", w.err
	}
	p, err := cleanPath(name)
	if err != nil {
		return "", err
	}
	if t := mode.Type(); t != 0 && t != kind {
		return "", fmt.Errorf("cpio: %q: mode %v has the wrong file type: %w", p, mode, api.ErrBadRequest)
	}
	if w.names[p] {
		return "", fmt.Errorf("cpio: %q written twice: %w", p, api.ErrBadRequest)
	}
	return p, nil
}

// cleanPath validates an entry name and returns it without a leading
// slash: archives hold paths relative to the root they are unpacked into,
// as the kernel's own gen_init_cpio writes them, so that tools such as
// GNU cpio never write outside their target directory.
func cleanPath(name string) (string, error) {
	p := strings.TrimPrefix(name, "/")
	switch {
	case p == "" || p == ".":
		return "", fmt.Errorf("cpio: empty path %q: %w", name, api.ErrBadRequest)
	case strings.IndexByte(p, 0) >= 0:
		return "", fmt.Errorf("cpio: path %q contains NUL: %w", name, api.ErrBadRequest)
	case p == trailer:
		return "", fmt.Errorf("cpio: path %q is reserved for the trailer: %w", name, api.ErrBadRequest)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return "", fmt.Errorf("cpio: path %q contains \"..\": %w", name, api.ErrBadRequest)
		}
	}
	if c := path.Clean("/" + p); c != "/"+p {
		return "", fmt.Errorf("cpio: path %q is not canonical (want %q): %w", name, c, api.ErrBadRequest)
	}
	return p, nil
}

func unixPerm(mode os.FileMode) uint32 {
	m := uint32(mode.Perm())
	if mode&os.ModeSetuid != 0 {
		m |= modeSetuid
	}
	if mode&os.ModeSetgid != 0 {
		m |= modeSetgid
	}
	if mode&os.ModeSticky != 0 {
		m |= modeSticky
	}
	return m
}

// entry writes one header, the name and size bytes of body, each padded to
// 4 bytes. The trailer is written with ino 0; every other entry takes the
// next inode number.
func (w *Writer) entry(name string, mode, nlink uint32, size int64, body io.Reader) error {
	var ino uint32
	if name != trailer {
		w.ino++
		ino = w.ino
	}
	hdr := fmt.Sprintf("%s%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		magic, ino, mode, 0, 0, nlink, 0, uint32(size), 0, 0, 0, 0, len(name)+1, 0)
	buf := make([]byte, 0, headerLen+len(name)+4)
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = append(buf, nulPad[:pad(len(buf))]...)
	if _, err := w.w.Write(buf); err != nil {
		w.err = fmt.Errorf("cpio: write header of %q: %w", name, err)
		return w.err
	}
	if body != nil {
		n, err := io.CopyN(w.w, body, size)
		if err != nil {
			if err == io.EOF {
				err = fmt.Errorf("source ended after %d of %d bytes", n, size)
			}
			w.err = fmt.Errorf("cpio: write %q: %w", name, err)
			return w.err
		}
		// A source longer than declared means the caller's size is wrong;
		// the archive would silently hold a truncated file.
		var one [1]byte
		if m, _ := io.ReadFull(body, one[:]); m > 0 {
			w.err = fmt.Errorf("cpio: write %q: source holds more than the declared %d bytes", name, size)
			return w.err
		}
		if _, err := io.WriteString(w.w, nulPad[:pad(int(size%4))]); err != nil {
			w.err = fmt.Errorf("cpio: write %q: %w", name, err)
			return w.err
		}
	}
	if name != trailer {
		w.names[name] = true
	}
	return nil
}

// pad is how many bytes bring n up to a multiple of 4.
func pad(n int) int { return (4 - n%4) % 4 }
