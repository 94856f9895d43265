// Package image builds and keeps kiln's images: ext4 root filesystems made
// from a rootfs tarball, a directory tree or debootstrap, with the kiln
// agent injected, each stored with a small JSON description.
//
// Layout of the store directory:
//
//	<dir>/<name>/rootfs.ext4    the root filesystem (sparse)
//	<dir>/<name>/image.json     Image, as JSON
//	<dir>/.staging-<name>-*     a build in progress (its tree, then its files)
//	<dir>/.removing-<name>-*    an image being deleted
//
// A build happens entirely in its staging directory and becomes visible by
// one rename, so an image either exists complete or not at all; a failed
// or cancelled build deletes its staging directory, and NewStore deletes
// any left by a crash.
package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/disk"
	"github.com/kilnvm/kiln/internal/lockorder"
	"github.com/kilnvm/kiln/internal/system"
)

// File names inside an image directory.
const (
	RootFSFile   = "rootfs.ext4"
	MetadataFile = "image.json"
	// RootFSLabel is the ext4 label of every image's root filesystem.
	RootFSLabel = "kiln-root"

	stagingPrefix  = ".staging-"
	removingPrefix = ".removing-"
)

// Image describes a stored image; it is the content of image.json.
type Image struct {
	Name string `json:"name"`
	// Source says where the image came from ("tar", "dir:/srv/rootfs",
	// "debootstrap:bookworm http://deb.debian.org/debian").
	Source string `json:"source"`
	// SizeBytes is the size of the root filesystem (the disk a VM sees
	// before any per-VM growth).
	SizeBytes int64 `json:"size_bytes"`
	// ContentBytes is what the files in it take.
	ContentBytes int64 `json:"content_bytes"`
	// HasSystemd is true when the image's /sbin/init is systemd; the agent
	// unit is installed in such images.
	HasSystemd bool      `json:"has_systemd"`
	Created    time.Time `json:"created"`
	// KernelName is the kernel VMs of this image boot unless told
	// otherwise; empty means the daemon's default.
	KernelName string `json:"kernel_name,omitempty"`
	// Digest is the manifest digest of a pulled OCI image.
	Digest string `json:"digest,omitempty"`
	// Config is how an OCI image's processes run (Env, WorkingDir, User,
	// Entrypoint, Cmd); nil for images not pulled from a registry.
	Config *RuntimeConfig `json:"config,omitempty"`
	// Unmanaged is the host path of a registered image's root filesystem
	// (register.go), which kiln never writes or deletes; empty for images
	// in managed storage.
	Unmanaged string `json:"unmanaged_path,omitempty"`

	// RootFS is the absolute path of the root filesystem. Not stored: the
	// store fills it in.
	RootFS string `json:"-"`
}

// BuildOptions are common to every way of building an image.
type BuildOptions struct {
	// Size is the root filesystem size in bytes; 0 sizes it to the content
	// (content + 30% + 256 MiB, rounded up to 64 MiB).
	Size int64
	// KernelName is recorded as the image's default kernel.
	KernelName string
	// Source overrides the recorded source description.
	Source string
	// Digest and Config are recorded as they are (OCI pulls).
	Digest string
	Config *RuntimeConfig
}

// Store keeps images in a directory. It is safe for concurrent use; only
// one Store may use a directory at a time.
type Store struct {
	// Immutable after NewStore.
	dir       string
	runner    system.Runner
	log       *slog.Logger
	agentPath string
	aptRoot   fs.FS
	limits    Limits
	now       func() time.Time
	transport http.RoundTripper // registry access (oci.go)
	keychain  authn.Keychain
	cacheDir  string // OCI blob cache (oci.go)

	// pulls coalesces concurrent pulls of one name (flight.go); it owns
	// its lock.
	pulls flights
	// cacheMu is held shared by every pull and exclusively by PruneCache,
	// so a prune never deletes a blob a pull is about to use.
	cacheMu lockorder.RWMutex

	// mu serialises the instants when an image name appears or disappears
	// (the check-and-rename of a commit, the rename of a remove). It is a
	// leaf lock and never held across a build.
	mu lockorder.Mutex
}

// Option configures a Store.
type Option func(*Store)

// WithAptRoot sets the filesystem whose etc/apt holds the apt sources
// used to find the host's Debian mirror (default: the host's "/").
func WithAptRoot(fsys fs.FS) Option { return func(s *Store) { s.aptRoot = fsys } }

// WithLimits sets the archive limits for ImportTar and ImportDir.
func WithLimits(l Limits) Option { return func(s *Store) { s.limits = l } }

// WithClock sets the clock that stamps Created.
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// NewStore opens (creating it if needed) the image store in dir. agentPath
// is the host path of the static kiln-agent binary injected into every
// image. Staging directories left by a crash are deleted.
func NewStore(dir string, runner system.Runner, logger *slog.Logger, agentPath string, opts ...Option) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image store %s: %w", dir, err)
	}
	s := &Store{
		dir: abs, runner: runner, log: logger, agentPath: agentPath,
		aptRoot: os.DirFS("/"), limits: DefaultLimits(), now: time.Now,
		transport: remote.DefaultTransport, keychain: authn.DefaultKeychain,
		cacheDir: filepath.Join(abs, ".oci-cache"),
	}
	for _, o := range opts {
		o(s)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("create image store: %w", err)
	}
	ents, err := os.ReadDir(abs)
	if err != nil {
		return nil, fmt.Errorf("read image store: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), stagingPrefix) || strings.HasPrefix(e.Name(), removingPrefix) {
			p := filepath.Join(abs, e.Name())
			s.log.Info("image store: removing leftover", "path", p)
			if err := removeTree(p); err != nil {
				return nil, fmt.Errorf("remove leftover %s: %w", p, err)
			}
		}
	}
	return s, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// ImportTar builds the image name from a root filesystem tarball read from
// r: plain tar, gzip, xz or zstd (sniffed). Bad archive content is
// api.ErrBadRequest naming the entry.
func (s *Store) ImportTar(ctx context.Context, name string, r io.Reader, opts BuildOptions) (Image, error) {
	if opts.Source == "" {
		opts.Source = "tar"
	}
	return s.build(ctx, name, opts, func(ctx context.Context, tree string) error {
		tr, err := decompress(r, s.limits)
		if err != nil {
			return err
		}
		defer tr.Close()
		st, err := Extract(ctx, tr, tree, s.limits)
		if err != nil {
			return err
		}
		if st.Entries == 0 {
			return fmt.Errorf("archive has no entries: %w", api.ErrBadRequest)
		}
		s.log.Debug("image: extracted", "image", name, "entries", st.Entries, "bytes", st.Bytes, "xattrs_skipped", st.XattrsSkipped)
		return nil
	})
}

// ImportDir builds the image name from a copy of the directory tree dir
// (which is not modified). Symlinks are copied, not followed; mount points
// below dir are copied empty.
func (s *Store) ImportDir(ctx context.Context, name, dir string, opts BuildOptions) (Image, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Image{}, fmt.Errorf("import %s: %w", dir, err)
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return Image{}, fmt.Errorf("import directory %s: %w", abs, api.ErrNotFound)
	case err != nil:
		return Image{}, fmt.Errorf("import directory: %w", err)
	case !fi.IsDir():
		return Image{}, fmt.Errorf("import directory %s: not a directory: %w", abs, api.ErrBadRequest)
	}
	if opts.Source == "" {
		opts.Source = "dir:" + abs
	}
	if within(s.dir, abs) {
		return Image{}, fmt.Errorf("import directory %s: it contains the image store: %w", abs, api.ErrBadRequest)
	}
	return s.build(ctx, name, opts, func(ctx context.Context, tree string) error {
		// Stream the tree through the same extractor as a tarball, so one
		// careful code path makes every image.
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			err := writeTreeTar(ctx, abs, pw)
			pw.CloseWithError(err)
			done <- err
		}()
		_, err := Extract(ctx, pr, tree, s.limits)
		// Stop the writer if extraction ended early, and wait for it.
		pr.CloseWithError(errors.New("extraction stopped"))
		werr := <-done
		if err != nil {
			return err
		}
		return werr
	})
}

// BuildDebootstrap builds the image name with debootstrap (which must be
// installed; it needs root and network access to the mirror).
func (s *Store) BuildDebootstrap(ctx context.Context, name string, d Debootstrap, opts BuildOptions) (Image, error) {
	d, err := d.normalize(func(suite string) (string, error) { return HostDebianMirror(s.aptRoot, suite) })
	if err != nil {
		return Image{}, err
	}
	if opts.Source == "" {
		opts.Source = "debootstrap:" + d.Suite + " " + d.Mirror
	}
	return s.build(ctx, name, opts, func(ctx context.Context, tree string) error {
		start := time.Now()
		if _, err := system.Command(ctx, s.runner, "debootstrap", d.args(tree)...); err != nil {
			return api.Hinted(fmt.Errorf("debootstrap %s from %s: %w", d.Suite, d.Mirror, err),
				"debootstrap needs root, the debootstrap package and access to the mirror")
		}
		s.log.Info("image: debootstrap done", "image", name, "suite", d.Suite, "took", time.Since(start).Round(time.Millisecond))
		return trimDebootstrap(tree)
	})
}

// trimDebootstrap deletes what debootstrap leaves that no VM needs: the
// downloaded packages (often a third of the tree).
func trimDebootstrap(tree string) error {
	debs, err := filepath.Glob(filepath.Join(tree, "var/cache/apt/archives/*.deb"))
	if err != nil {
		return err
	}
	for _, d := range debs {
		if err := os.Remove(d); err != nil {
			return fmt.Errorf("trim debootstrap cache: %w", err)
		}
	}
	return nil
}

func (s *Store) validate(name string, opts BuildOptions) error {
	if err := api.ValidateName("image", name); err != nil {
		return err
	}
	if opts.KernelName != "" {
		if err := api.ValidateName("kernel", opts.KernelName); err != nil {
			return err
		}
	}
	if opts.Size < 0 || (opts.Size > 0 && opts.Size < disk.MinExt4Size) {
		return fmt.Errorf("image size %d: want 0 (fit the content) or at least %d MiB: %w", opts.Size, disk.MinExt4Size>>20, api.ErrBadRequest)
	}
	fi, err := os.Stat(s.agentPath)
	if err != nil || !fi.Mode().IsRegular() {
		if err == nil {
			err = errors.New("not a regular file")
		}
		return api.Hinted(fmt.Errorf("kiln-agent binary %q: %v: %w", s.agentPath, err, api.ErrFailedPrecondition),
			"build cmd/kiln-agent (CGO_ENABLED=0) and point the daemon at it")
	}
	if _, err := os.Lstat(filepath.Join(s.dir, name)); err == nil {
		return fmt.Errorf("image %q: %w", name, api.ErrAlreadyExists)
	}
	return nil
}

// build runs populate into a fresh tree in a staging directory, makes it
// an image and commits it under name.
func (s *Store) build(ctx context.Context, name string, opts BuildOptions, populate func(ctx context.Context, tree string) error) (img Image, err error) {
	if err := s.validate(name, opts); err != nil {
		return Image{}, err
	}
	start := time.Now()
	staging, err := os.MkdirTemp(s.dir, stagingPrefix+name+"-")
	if err != nil {
		return Image{}, fmt.Errorf("build image %q: %w", name, err)
	}
	committed := false
	defer func() {
		if committed {
			return
		}
		if rerr := removeTree(staging); rerr != nil {
			s.log.Error("image: cannot remove staging directory", "path", staging, "err", rerr)
			err = errors.Join(err, rerr)
		}
	}()
	wrap := func(stage string, err error) error {
		// A cancelled context shows up in many shapes (a killed
		// debootstrap says only "signal: killed"), so ask ctx itself.
		if cerr := ctx.Err(); cerr != nil {
			if !errors.Is(err, cerr) {
				err = fmt.Errorf("%w (%w)", cerr, err)
			}
			return fmt.Errorf("build image %q: %s: %w: %w", name, stage, api.ErrCanceled, err)
		}
		return fmt.Errorf("build image %q: %s: %w", name, stage, err)
	}

	tree := filepath.Join(staging, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		return Image{}, wrap("create tree", err)
	}
	if err := populate(ctx, tree); err != nil {
		return Image{}, wrap("populate", err)
	}
	if err := ctx.Err(); err != nil {
		return Image{}, wrap("populate", err)
	}
	hasSystemd, err := prepareTree(tree, s.agentPath)
	if err != nil {
		return Image{}, wrap("inject agent", err)
	}
	usage, err := treeUsage(ctx, tree)
	if err != nil {
		return Image{}, wrap("measure content", err)
	}
	size := opts.Size
	if size == 0 {
		size = autoSize(usage.bytes)
	} else if size < usage.bytes {
		return Image{}, wrap("size", fmt.Errorf("%d bytes is less than the %d bytes of content: %w", size, usage.bytes, api.ErrBadRequest))
	}
	rootfs := filepath.Join(staging, RootFSFile)
	err = disk.MakeExt4(ctx, s.runner, rootfs, size, disk.Ext4Options{
		Label: RootFSLabel, SourceDir: tree, Inodes: inodesFor(usage.inodes, size),
	})
	if err != nil {
		return Image{}, wrap("make ext4", err)
	}
	if err := removeTree(tree); err != nil {
		return Image{}, wrap("remove tree", err)
	}
	img = Image{
		Name: name, Source: opts.Source, SizeBytes: size, ContentBytes: usage.bytes,
		HasSystemd: hasSystemd, Created: s.now().UTC(), KernelName: opts.KernelName,
		Digest: opts.Digest, Config: opts.Config,
	}
	if err := writeJSON(filepath.Join(staging, MetadataFile), img); err != nil {
		return Image{}, wrap("write metadata", err)
	}
	if err := syncPath(rootfs); err != nil {
		return Image{}, wrap("sync", err)
	}
	if err := syncPath(staging); err != nil {
		return Image{}, wrap("sync", err)
	}
	if err := s.commit(ctx, staging, name); err != nil {
		return Image{}, err
	}
	committed = true
	img.RootFS = filepath.Join(s.dir, name, RootFSFile)
	s.log.Info("image: built", "image", name, "source", img.Source, "size", size,
		"content", usage.bytes, "systemd", hasSystemd, "took", time.Since(start).Round(time.Millisecond))
	return img, nil
}

// commit makes the staging directory the image name, atomically.
func (s *Store) commit(ctx context.Context, staging, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("build image %q: %w: %w", name, err, api.ErrCanceled)
	}
	final := filepath.Join(s.dir, name)
	// renameat2(RENAME_NOREPLACE) fails if the name appeared meanwhile,
	// where plain rename would replace an empty directory.
	if err := unix.Renameat2(unix.AT_FDCWD, staging, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("image %q: %w", name, api.ErrAlreadyExists)
		}
		return fmt.Errorf("build image %q: commit: %w", name, err)
	}
	if err := syncPath(s.dir); err != nil {
		return fmt.Errorf("build image %q: sync store: %w", name, err)
	}
	return nil
}

// autoSize is content + 30% + 256 MiB, rounded up to 64 MiB: room for the
// filesystem's own metadata and for the guest to install a little.
func autoSize(content int64) int64 {
	const round = 64 << 20
	s := content + content*3/10 + 256<<20
	return (s + round - 1) / round * round
}

// inodesFor asks mke2fs for more inodes than its one-per-16-KiB default
// when the tree has many small files, with room to grow; 0 keeps the
// default.
func inodesFor(used, size int64) int64 {
	want := used*2 + 4096
	if want <= size/16384 {
		return 0
	}
	return want
}

type usage struct {
	bytes  int64 // file data in 4 KiB blocks, plus an inode each
	inodes int64
}

// treeUsage measures what the tree will take in ext4: every file's data
// rounded up to 4 KiB blocks (directories and long symlinks take a block)
// plus a 256-byte inode each. Hard links are counted once.
func treeUsage(ctx context.Context, tree string) (usage, error) {
	var u usage
	seen := map[uint64]bool{}
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if st.Nlink > 1 && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		u.inodes++
		u.bytes += 256
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			u.bytes += (st.Size + 4095) / 4096 * 4096
		case unix.S_IFDIR:
			u.bytes += 4096
		case unix.S_IFLNK:
			if st.Size >= 60 { // longer targets do not fit in the inode
				u.bytes += 4096
			}
		}
		return nil
	})
	return u, err
}

// Get returns the image name (api.ErrNotFound if there is none).
func (s *Store) Get(ctx context.Context, name string) (Image, error) {
	if err := api.ValidateName("image", name); err != nil {
		return Image{}, err
	}
	return s.read(name)
}

func (s *Store) read(name string) (Image, error) {
	dir := filepath.Join(s.dir, name)
	data, err := os.ReadFile(filepath.Join(dir, MetadataFile))
	if errors.Is(err, os.ErrNotExist) {
		return Image{}, fmt.Errorf("image %q: %w", name, api.ErrNotFound)
	}
	if err != nil {
		return Image{}, fmt.Errorf("read image %q: %w", name, err)
	}
	var img Image
	if err := json.Unmarshal(data, &img); err != nil {
		return Image{}, fmt.Errorf("read image %q: %s: %w", name, MetadataFile, err)
	}
	if img.Name != name {
		return Image{}, fmt.Errorf("read image %q: %s names %q", name, MetadataFile, img.Name)
	}
	img.RootFS = filepath.Join(dir, RootFSFile)
	if _, err := os.Stat(img.RootFS); err != nil {
		return Image{}, fmt.Errorf("image %q: root filesystem: %w", name, err)
	}
	return img, nil
}

// List returns every image, sorted by name. An unreadable image is logged
// and left out rather than hiding all the others.
func (s *Store) List(ctx context.Context) ([]Image, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var out []Image
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") || api.ValidateName("image", e.Name()) != nil {
			continue
		}
		img, err := s.read(e.Name())
		if err != nil {
			s.log.Warn("image: skipping unreadable image", "image", e.Name(), "err", err)
			continue
		}
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Remove deletes the image name (api.ErrNotFound if there is none). The
// name disappears at once; the files go after. Disks cloned from the image
// are separate files and are not affected.
func (s *Store) Remove(ctx context.Context, name string) error {
	if err := api.ValidateName("image", name); err != nil {
		return err
	}
	final := filepath.Join(s.dir, name)
	gone, err := s.detach(final, name)
	if err != nil {
		return err
	}
	if err := removeTree(gone); err != nil {
		return fmt.Errorf("remove image %q: %w", name, err)
	}
	s.log.Info("image: removed", "image", name)
	return nil
}

// detach renames the image directory out of the way under the lock.
func (s *Store) detach(final, name string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := os.Lstat(final); errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("image %q: %w", name, api.ErrNotFound)
	}
	gone, err := os.MkdirTemp(s.dir, removingPrefix+name+"-")
	if err != nil {
		return "", fmt.Errorf("remove image %q: %w", name, err)
	}
	target := filepath.Join(gone, name)
	if err := os.Rename(final, target); err != nil {
		os.Remove(gone)
		return "", fmt.Errorf("remove image %q: %w", name, err)
	}
	return gone, nil
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(data, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncPath fsyncs a directory (or file) so a rename or create in it is
// durable.
func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
