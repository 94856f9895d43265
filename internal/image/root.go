package image

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// root is a directory tree being built, addressed only through a directory
// descriptor. Every path is resolved with openat2(RESOLVE_IN_ROOT), so the
// kernel treats the tree's top as "/" for symlinks and "..": a symlink in
// the tree (even "/etc -> /host/etc" or "x -> ../../..") can never lead a
// write outside it. Final path components are never followed: entries are
// created with O_EXCL or *at calls that act on the link itself.
//
// A root is used by one goroutine at a time.
type root struct {
	fd   int
	path string // for messages only
}

// resolveFlags keep resolution inside the tree, refuse /proc magic links
// and never cross into another mount (a proc or sys left mounted inside a
// tree by an interrupted debootstrap, say).
const resolveFlags = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

func openRoot(dir string) (*root, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open tree %s: %w", dir, err)
	}
	return &root{fd: fd, path: dir}, nil
}

func (r *root) close() error { return unix.Close(r.fd) }

// openDir opens the directory rel (a clean relative path, "" or "." for the
// top) for use as a dirfd, resolving symlinks inside the tree.
func (r *root) openDir(rel string) (int, error) {
	if rel == "" {
		rel = "."
	}
	for {
		fd, err := unix.Openat2(r.fd, rel, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: resolveFlags,
		})
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			// openat2 returns EAGAIN when a concurrent rename raced the
			// lookup; nothing else renames in the tree, so retrying is
			// enough.
			continue
		}
		return fd, err
	}
}

// parent opens the directory that holds rel, creating missing directories
// on the way (0755, root-owned, like tar does for entries whose parents the
// archive does not list), and returns its fd and rel's last component.
func (r *root) parent(rel string) (int, string, error) {
	dir, base := path.Split(rel)
	dir = strings.TrimSuffix(dir, "/")
	if base == "" || base == "." || base == ".." {
		return -1, "", fmt.Errorf("invalid path %q", rel)
	}
	fd, err := r.mkdirAll(dir)
	if err != nil {
		return -1, "", err
	}
	return fd, base, nil
}

// mkdirAll makes sure the directory rel exists inside the tree and returns
// an fd for it.
func (r *root) mkdirAll(rel string) (int, error) {
	fd, err := r.openDir(rel)
	if err == nil || !errors.Is(err, unix.ENOENT) {
		if err != nil {
			return -1, fmt.Errorf("open directory %q: %w", rel, err)
		}
		return fd, nil
	}
	// Walk down from the top, creating what is missing. A component that
	// exists but is not a directory (or is a dangling symlink) fails.
	cur, err := r.openDir("")
	if err != nil {
		return -1, err
	}
	done := ""
	for _, c := range strings.Split(rel, "/") {
		if c == "" || c == "." {
			continue
		}
		next := path.Join(done, c)
		if err := unix.Mkdirat(cur, c, 0o755); err == nil {
			// mkdir applies the umask; implied directories are 0755.
			unix.Fchmodat(cur, c, 0o755, 0)
		} else if !errors.Is(err, unix.EEXIST) {
			unix.Close(cur)
			return -1, fmt.Errorf("create directory %q: %w", next, err)
		}
		unix.Close(cur)
		cur, err = r.openDir(next)
		if err != nil {
			return -1, fmt.Errorf("directory %q: %w", next, describeNotDir(err))
		}
		done = next
	}
	return cur, nil
}

func describeNotDir(err error) error {
	if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("exists but is not a directory (or is a symlink to nothing): %w", err)
	}
	return err
}

// lstatAt stats name in dirfd without following a final symlink.
func lstatAt(dirfd int, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}

// clearForNew removes a non-directory at name so a new entry can take its
// place, as tar does. It refuses to replace a directory with a
// non-directory: that would need a recursive delete of what earlier
// entries built, which a rootfs archive has no business asking for.
// It reports whether a directory already stands at name.
func clearForNew(dirfd int, name string, newIsDir bool) (isDir bool, err error) {
	st, err := lstatAt(dirfd, name)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if newIsDir {
			return true, nil
		}
		return true, errReplaceDir
	}
	return false, unix.Unlinkat(dirfd, name, 0)
}

var errReplaceDir = errors.New("would replace a directory")

func isDirMode(m uint32) bool { return m&unix.S_IFMT == unix.S_IFDIR }
