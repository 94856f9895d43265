package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/disk"
)

// Limits bound what one archive may ask of the host. A zero field takes the
// value of DefaultLimits.
type Limits struct {
	// MaxEntries caps the number of archive entries (headers).
	MaxEntries int
	// MaxFileSize caps the size of any one regular file.
	MaxFileSize int64
	// MaxTotalSize caps the sum of regular file sizes.
	MaxTotalSize int64
}

// DefaultLimits are generous for real root filesystems (a full desktop
// distribution has a few hundred thousand files and a few GiB) and stop
// archives that would fill the host.
func DefaultLimits() Limits {
	return Limits{MaxEntries: 2_000_000, MaxFileSize: 32 << 30, MaxTotalSize: 128 << 30}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxEntries <= 0 {
		l.MaxEntries = d.MaxEntries
	}
	if l.MaxFileSize <= 0 {
		l.MaxFileSize = d.MaxFileSize
	}
	if l.MaxTotalSize <= 0 {
		l.MaxTotalSize = d.MaxTotalSize
	}
	return l
}

// ExtractStats counts what an extraction made.
type ExtractStats struct {
	Entries   int
	Files     int
	Dirs      int
	Symlinks  int
	Hardlinks int
	Devices   int
	Fifos     int
	// Bytes is the sum of regular file sizes.
	Bytes int64
	// XattrsSkipped counts extended attributes the tree's filesystem would
	// not take (not supported, or not permitted).
	XattrsSkipped int
	// Whiteouts counts OCI whiteout entries (ApplyLayer only).
	Whiteouts int
}

// Extractor unpacks tar archives into a directory tree as faithfully as a
// root filesystem needs (owners, modes with set-id and sticky bits, times,
// device nodes, fifos, hard links, extended attributes) and as safely as an
// untrusted archive demands:
//
//   - entry names that are absolute or contain ".." are refused, naming
//     the entry (api.ErrBadRequest);
//   - symlinks in the tree are never followed out of it: every lookup is
//     resolved by the kernel as if the tree were "/" (openat2
//     RESOLVE_IN_ROOT), so an entry "lib/x" written after a symlink
//     "lib -> /usr/lib" lands in the tree's usr/lib, as it would inside the
//     guest, and "lib -> ../../etc" cannot reach the host's /etc; the last
//     component of an entry is never followed;
//   - a hard link must name a regular file extracted earlier by this
//     Extractor, and is made to that very inode;
//   - sizes and entry counts are capped by Limits.
//
// Several archives may be applied in order to one tree (image layers). An
// Extractor is used by one goroutine; Close it to set directory times.
// Creating device nodes and setting owners needs root.
type Extractor struct {
	root  *root
	lim   Limits
	stats ExtractStats
	// regular holds the clean names of entries that are regular files now,
	// the only valid hard link targets.
	regular  map[string]bool
	dirTimes []dirTime
	// layer is non-nil while ApplyLayer runs: the clean names made by the
	// current layer, which its whiteouts must not hide.
	layer map[string]bool
	// buf is the copy buffer of regular files, allocated once: a fresh
	// 1 MiB per file made small files cost a megabyte of zeroing each.
	buf []byte
}

type dirTime struct {
	name         string
	atime, mtime time.Time
}

// NewExtractor returns an Extractor writing into the existing directory dir.
func NewExtractor(dir string, lim Limits) (*Extractor, error) {
	r, err := openRoot(dir)
	if err != nil {
		return nil, err
	}
	return &Extractor{root: r, lim: lim.withDefaults(), regular: map[string]bool{}}, nil
}

// Extract unpacks one tar archive from r into dir.
func Extract(ctx context.Context, r io.Reader, dir string, lim Limits) (ExtractStats, error) {
	x, err := NewExtractor(dir, lim)
	if err != nil {
		return ExtractStats{}, err
	}
	err = x.Apply(ctx, r)
	if cerr := x.Close(); err == nil {
		err = cerr
	}
	return x.Stats(), err
}

// Stats returns what has been extracted so far.
func (x *Extractor) Stats() ExtractStats { return x.stats }

// Close sets the times of the directories extracted (deferred because
// creating entries inside a directory changes its mtime) and releases the
// tree.
func (x *Extractor) Close() error {
	var errs []error
	for i := len(x.dirTimes) - 1; i >= 0; i-- {
		d := x.dirTimes[i]
		fd, err := x.root.openDir(d.name)
		if err != nil {
			continue // replaced by a later entry
		}
		if err := unix.UtimesNanoAt(fd, ".", timespecs(d.atime, d.mtime), 0); err != nil {
			errs = append(errs, fmt.Errorf("set times of %q: %w", d.name, err))
		}
		unix.Close(fd)
	}
	x.dirTimes = nil
	if err := x.root.close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// sourceReader remembers the last error of the reader under the tar
// reader, so a failing source (a cancelled download, a disk error) is not
// reported as a malformed archive.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// Apply unpacks one tar archive from r. On error the tree is left partly
// written; the caller discards it.
func (x *Extractor) Apply(ctx context.Context, r io.Reader) error {
	src := &sourceReader{r: r}
	tr := tar.NewReader(src)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if src.err != nil {
				return fmt.Errorf("read archive: %w", src.err)
			}
			return fmt.Errorf("read archive after %d entries: %v: %w", x.stats.Entries, err, api.ErrBadRequest)
		}
		x.stats.Entries++
		if x.stats.Entries > x.lim.MaxEntries {
			return fmt.Errorf("archive has more than %d entries: %w", x.lim.MaxEntries, api.ErrBadRequest)
		}
		if err := x.entry(ctx, hdr, tr, src); err != nil {
			return err
		}
	}
}

// badEntry is an error in the archive's content.
func badEntry(hdr *tar.Header, format string, args ...any) error {
	return fmt.Errorf("archive entry %q: %s: %w", hdr.Name, fmt.Sprintf(format, args...), api.ErrBadRequest)
}

// CleanEntryName turns a tar entry name into a clean path relative to the
// tree's top ("" for the top itself), refusing absolute names and any ".."
// component.
func CleanEntryName(name string) (string, error) {
	switch {
	case name == "":
		return "", errors.New("empty name")
	case strings.ContainsRune(name, 0):
		return "", errors.New("NUL byte in name")
	case strings.HasPrefix(name, "/"):
		return "", errors.New("absolute path")
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", errors.New(`".." component`)
		}
	}
	c := path.Clean(name)
	if c == "." {
		return "", nil
	}
	return c, nil
}

func (x *Extractor) entry(ctx context.Context, hdr *tar.Header, content io.Reader, src *sourceReader) (err error) {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil // global PAX defaults; tar.Reader applies what matters
	}
	name, err := CleanEntryName(hdr.Name)
	if err != nil {
		return badEntry(hdr, "%v", err)
	}
	if x.layer != nil {
		if handled, err := x.whiteout(hdr, name); handled {
			return err
		}
		defer func() {
			if err == nil {
				x.layer[name] = true
			}
		}()
	}
	if hdr.Uid < 0 || hdr.Gid < 0 || hdr.Uid > 1<<32-2 || hdr.Gid > 1<<32-2 {
		return badEntry(hdr, "owner %d:%d out of range", hdr.Uid, hdr.Gid)
	}
	meta := entryMeta{
		uid: hdr.Uid, gid: hdr.Gid,
		perm:  uint32(hdr.Mode) & 0o7777,
		mtime: hdr.ModTime, atime: hdr.AccessTime,
	}
	if meta.atime.IsZero() {
		meta.atime = meta.mtime
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse, 0 /* pre-POSIX regular file */ :
		if name == "" {
			return badEntry(hdr, "a regular file cannot be the top directory")
		}
		err = x.file(ctx, hdr, name, meta, content, src)
	case tar.TypeDir:
		err = x.dir(hdr, name, meta)
	case tar.TypeSymlink:
		err = x.symlink(hdr, name, meta)
	case tar.TypeLink:
		err = x.hardlink(hdr, name)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		err = x.node(hdr, name, meta)
	default:
		return badEntry(hdr, "unsupported entry type %q", hdr.Typeflag)
	}
	return err
}

type entryMeta struct {
	uid, gid     int
	perm         uint32
	mtime, atime time.Time
}

func timespecs(atime, mtime time.Time) []unix.Timespec {
	return []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
}

// prepare resolves the parent of a non-top entry and clears the way for it.
func (x *Extractor) prepare(hdr *tar.Header, name string, isDir bool) (dirfd int, base string, exists bool, err error) {
	if name == "" {
		return -1, "", false, badEntry(hdr, "only a directory can be the top of the tree")
	}
	dirfd, base, err = x.root.parent(name)
	if err != nil {
		return -1, "", false, badEntry(hdr, "parent: %v", err)
	}
	exists, err = clearForNew(dirfd, base, isDir)
	if errors.Is(err, errReplaceDir) && x.layer != nil && !x.layer[name] {
		// An OCI layer may replace a lower layer's directory with a file.
		if err = removeAllAt(dirfd, base); err == nil {
			x.forget(name)
			exists = false
		}
	}
	if errors.Is(err, errReplaceDir) {
		unix.Close(dirfd)
		return -1, "", false, badEntry(hdr, "would replace the directory %q with a %s", name, typeName(hdr.Typeflag))
	}
	if err != nil {
		unix.Close(dirfd)
		return -1, "", false, fmt.Errorf("archive entry %q: replace existing: %w", hdr.Name, err)
	}
	delete(x.regular, name)
	return dirfd, base, exists, nil
}

func (x *Extractor) file(ctx context.Context, hdr *tar.Header, name string, m entryMeta, content io.Reader, src *sourceReader) error {
	if hdr.Size < 0 || hdr.Size > x.lim.MaxFileSize {
		return badEntry(hdr, "size %d exceeds the limit of %d bytes per file", hdr.Size, x.lim.MaxFileSize)
	}
	if x.stats.Bytes+hdr.Size > x.lim.MaxTotalSize {
		return badEntry(hdr, "archive content exceeds the limit of %d bytes", x.lim.MaxTotalSize)
	}
	dirfd, base, _, err := x.prepare(hdr, name, false)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	fd, err := unix.Openat(dirfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("archive entry %q: create: %w", hdr.Name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	if x.buf == nil {
		x.buf = make([]byte, copyBufSize)
	}
	n, err := writeSparse(ctx, f, content, x.buf)
	if err != nil {
		if src.err != nil {
			return fmt.Errorf("archive entry %q: read: %w", hdr.Name, src.err)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return badEntry(hdr, "archive ends inside the file")
		}
		return fmt.Errorf("archive entry %q: write: %w", hdr.Name, err)
	}
	if n != hdr.Size {
		return badEntry(hdr, "got %d bytes of %d", n, hdr.Size)
	}
	if err := x.setMeta(hdr, fd, m); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("archive entry %q: close: %w", hdr.Name, err)
	}
	if err := unix.UtimesNanoAt(dirfd, base, timespecs(m.atime, m.mtime), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("archive entry %q: set times: %w", hdr.Name, err)
	}
	x.regular[name] = true
	x.stats.Files++
	x.stats.Bytes += n
	return nil
}

// setMeta sets owner, then mode (chown clears set-id bits, so the order
// matters), then extended attributes, on an open file or directory.
func (x *Extractor) setMeta(hdr *tar.Header, fd int, m entryMeta) error {
	if err := unix.Fchown(fd, m.uid, m.gid); err != nil {
		return fmt.Errorf("archive entry %q: set owner %d:%d: %w", hdr.Name, m.uid, m.gid, err)
	}
	if err := unix.Fchmod(fd, m.perm); err != nil {
		return fmt.Errorf("archive entry %q: set mode %#o: %w", hdr.Name, m.perm, err)
	}
	var keys []string
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		attr := strings.TrimPrefix(k, "SCHILY.xattr.")
		err := unix.Fsetxattr(fd, attr, []byte(hdr.PAXRecords[k]), 0)
		switch {
		case err == nil:
		case errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EPERM):
			x.stats.XattrsSkipped++
		default:
			return badEntry(hdr, "extended attribute %q: %v", attr, err)
		}
	}
	return nil
}

func (x *Extractor) dir(hdr *tar.Header, name string, m entryMeta) error {
	var fd int
	if name == "" {
		var err error
		fd, err = unix.Openat(x.root.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("archive entry %q: open top: %w", hdr.Name, err)
		}
	} else {
		dirfd, base, exists, err := x.prepare(hdr, name, true)
		if err != nil {
			return err
		}
		if !exists {
			if err := unix.Mkdirat(dirfd, base, 0o700); err != nil {
				unix.Close(dirfd)
				return fmt.Errorf("archive entry %q: mkdir: %w", hdr.Name, err)
			}
		}
		fd, err = unix.Openat(dirfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(dirfd)
		if err != nil {
			return fmt.Errorf("archive entry %q: open: %w", hdr.Name, err)
		}
	}
	defer unix.Close(fd)
	if err := x.setMeta(hdr, fd, m); err != nil {
		return err
	}
	x.dirTimes = append(x.dirTimes, dirTime{name: name, atime: m.atime, mtime: m.mtime})
	x.stats.Dirs++
	return nil
}

func (x *Extractor) symlink(hdr *tar.Header, name string, m entryMeta) error {
	if hdr.Linkname == "" || strings.ContainsRune(hdr.Linkname, 0) || len(hdr.Linkname) >= unix.PathMax {
		return badEntry(hdr, "invalid symlink target %q", hdr.Linkname)
	}
	// The target is stored as written: it is only ever followed inside the
	// guest, or here under RESOLVE_IN_ROOT.
	dirfd, base, _, err := x.prepare(hdr, name, false)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	if err := unix.Symlinkat(hdr.Linkname, dirfd, base); err != nil {
		return fmt.Errorf("archive entry %q: symlink: %w", hdr.Name, err)
	}
	if err := unix.Fchownat(dirfd, base, m.uid, m.gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("archive entry %q: set owner: %w", hdr.Name, err)
	}
	if err := unix.UtimesNanoAt(dirfd, base, timespecs(m.atime, m.mtime), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("archive entry %q: set times: %w", hdr.Name, err)
	}
	x.stats.Symlinks++
	return nil
}

func (x *Extractor) hardlink(hdr *tar.Header, name string) error {
	target, err := CleanEntryName(hdr.Linkname)
	if err != nil {
		return badEntry(hdr, "hard link target %q: %v", hdr.Linkname, err)
	}
	if target == "" || target == name {
		return badEntry(hdr, "hard link target %q is not a file", hdr.Linkname)
	}
	if !x.regular[target] {
		return badEntry(hdr, "hard link target %q is not a regular file extracted earlier", hdr.Linkname)
	}
	tdir, err := x.root.openDir(path.Dir(target))
	if err != nil {
		return badEntry(hdr, "hard link target %q: %v", hdr.Linkname, err)
	}
	srcfd, err := unix.Openat(tdir, path.Base(target), unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	unix.Close(tdir)
	if err != nil {
		return badEntry(hdr, "hard link target %q: %v", hdr.Linkname, err)
	}
	defer unix.Close(srcfd)
	var st unix.Stat_t
	if err := unix.Fstat(srcfd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return badEntry(hdr, "hard link target %q is not a regular file", hdr.Linkname)
	}
	dirfd, base, _, err := x.prepare(hdr, name, false)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	// Link the inode we checked, not whatever the name means now.
	err = unix.Linkat(srcfd, "", dirfd, base, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPERM) {
		// AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the /proc/self/fd link
		// reaches the same inode without it.
		err = unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", srcfd), dirfd, base, unix.AT_SYMLINK_FOLLOW)
	}
	if err != nil {
		return fmt.Errorf("archive entry %q: hard link: %w", hdr.Name, err)
	}
	x.regular[name] = true
	x.stats.Hardlinks++
	return nil
}

func (x *Extractor) node(hdr *tar.Header, name string, m entryMeta) error {
	var mode uint32
	var dev uint64
	switch hdr.Typeflag {
	case tar.TypeChar, tar.TypeBlock:
		if hdr.Devmajor < 0 || hdr.Devmajor > 0xfff || hdr.Devminor < 0 || hdr.Devminor > 0xfffff {
			return badEntry(hdr, "device number %d:%d out of range", hdr.Devmajor, hdr.Devminor)
		}
		mode = unix.S_IFCHR
		if hdr.Typeflag == tar.TypeBlock {
			mode = unix.S_IFBLK
		}
		dev = unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	case tar.TypeFifo:
		mode = unix.S_IFIFO
	}
	dirfd, base, _, err := x.prepare(hdr, name, false)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	if err := unix.Mknodat(dirfd, base, mode|0o600, int(dev)); err != nil {
		return fmt.Errorf("archive entry %q: mknod: %w", hdr.Name, err)
	}
	if err := unix.Fchownat(dirfd, base, m.uid, m.gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("archive entry %q: set owner: %w", hdr.Name, err)
	}
	// base was just made by mknod and is not a symlink, so following it is
	// safe (fchmodat has no working no-follow flag before Linux 6.6).
	if err := unix.Fchmodat(dirfd, base, m.perm, 0); err != nil {
		return fmt.Errorf("archive entry %q: set mode: %w", hdr.Name, err)
	}
	if err := unix.UtimesNanoAt(dirfd, base, timespecs(m.atime, m.mtime), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("archive entry %q: set times: %w", hdr.Name, err)
	}
	if hdr.Typeflag == tar.TypeFifo {
		x.stats.Fifos++
	} else {
		x.stats.Devices++
	}
	return nil
}

func typeName(t byte) string {
	switch t {
	case tar.TypeReg, tar.TypeGNUSparse, 0:
		return "regular file"
	case tar.TypeSymlink:
		return "symlink"
	case tar.TypeLink:
		return "hard link"
	case tar.TypeChar:
		return "character device"
	case tar.TypeBlock:
		return "block device"
	case tar.TypeFifo:
		return "fifo"
	}
	return fmt.Sprintf("entry of type %q", t)
}

// copyBufSize is the size of the buffer writeSparse copies through.
const copyBufSize = 1 << 20

// writeSparse copies r into the empty file f through buf, leaving whole
// blocks of zeros as holes, and returns the number of bytes copied. Errors
// of r come back as they are: io.ErrUnexpectedEOF from a tar.Reader means
// the archive is cut short.
func writeSparse(ctx context.Context, f *os.File, r io.Reader, buf []byte) (int64, error) {
	var off int64
	// sized: the file already ends at off (its last block was written), so
	// it needs no truncate to its length.
	sized := true
	for {
		if err := ctx.Err(); err != nil {
			return off, err
		}
		n := 0
		var rerr error
		for n < len(buf) && rerr == nil {
			var k int
			k, rerr = r.Read(buf[n:])
			n += k
		}
		if err := disk.WriteSparseAt(f, buf[:n], off); err != nil {
			return off, err
		}
		if n > 0 {
			// WriteSparseAt skips zero blocks counted from buf's start.
			sized = !allZero(buf[(n-1)/4096*4096 : n])
		}
		off += int64(n)
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return off, rerr
		}
	}
	if !sized {
		if err := f.Truncate(off); err != nil {
			return off, err
		}
	}
	return off, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
