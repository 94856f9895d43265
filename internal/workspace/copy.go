package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/kilnvm/kiln/internal/system"
)

// ListFiles returns the repository's tracked files (from the index) and,
// with includeUntracked, its untracked files that no ignore rule covers,
// as paths relative to root. Ignored files are never listed. Submodule
// directories (gitlinks) are not files and are left out.
func ListFiles(ctx context.Context, r system.Runner, root string, includeUntracked bool) ([]string, error) {
	// "<mode> <object> <stage>\t<path>", once per stage of a conflicted path.
	out, err := r.Run(ctx, system.Cmd{Name: "git", Args: []string{"-C", root, "ls-files", "-z", "--stage"}})
	if err != nil {
		return nil, fmt.Errorf("list the files of %s: %w", root, err)
	}
	seen := map[string]bool{}
	var files []string
	add := func(s string) {
		// A nested repository shows up as "dir/" among untracked files.
		if s == "" || seen[s] || strings.HasSuffix(s, "/") {
			return
		}
		seen[s] = true
		files = append(files, s)
	}
	for _, rec := range bytes.Split(out, []byte{0}) {
		i := bytes.IndexByte(rec, '\t')
		if i < 0 || bytes.HasPrefix(rec, []byte("160000 ")) {
			continue
		}
		add(string(rec[i+1:]))
	}
	if includeUntracked {
		out, err := r.Run(ctx, system.Cmd{Name: "git", Args: []string{"-C", root, "ls-files", "-z", "--others", "--exclude-standard"}})
		if err != nil {
			return nil, fmt.Errorf("list the untracked files of %s: %w", root, err)
		}
		for _, p := range bytes.Split(out, []byte{0}) {
			add(string(p))
		}
	}
	return files, nil
}

// CopyStats counts what a tar stream carried.
type CopyStats struct {
	Files int   `json:"files"`
	Bytes int64 `json:"bytes"`
	// Missing counts listed files absent from disk (deleted in the work
	// tree but not in the index): they are left out, as on disk.
	Missing int `json:"missing,omitempty"`
	// CheckedOut counts the files the guest checked out of the commit
	// itself (from the pack) rather than receiving them in the tar.
	CheckedOut int `json:"checked_out,omitempty"`
}

// WriteTar streams a tar of files (relative to root) to w, reading each
// file once, straight from disk: regular files keep their permission bits
// (so the executable bit survives), symbolic links stay links. Files
// deleted on disk are skipped; other kinds (sockets, devices, a
// directory where a file was) are skipped too, since git cannot hold them.
func WriteTar(ctx context.Context, root string, files []string, w io.Writer) (CopyStats, error) {
	tw := tar.NewWriter(w)
	st, err := addFiles(ctx, tw, root, files)
	if err != nil {
		return st, err
	}
	return st, tw.Close()
}

// addFiles writes files (relative to root) to tw, as WriteTar does.
func addFiles(ctx context.Context, tw *tar.Writer, root string, files []string) (CopyStats, error) {
	var st CopyStats
	for _, rel := range files {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		if !filepath.IsLocal(rel) {
			return st, fmt.Errorf("refusing path %q that leaves the repository", rel)
		}
		n, err := addEntry(tw, filepath.Join(root, rel), rel)
		if errors.Is(err, fs.ErrNotExist) {
			st.Missing++
			continue
		}
		if err != nil {
			return st, err
		}
		if n >= 0 {
			st.Files++
			st.Bytes += n
		}
	}
	return st, nil
}

// WriteFullTar streams a tar of everything under root — .git, ignored
// files and submodules included — for the full-copy mode.
func WriteFullTar(ctx context.Context, root string, w io.Writer) (CopyStats, error) {
	tw := tar.NewWriter(w)
	var st CopyStats
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if path == root {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: rel + "/", Mode: int64(info.Mode().Perm()), ModTime: info.ModTime(), Format: tar.FormatPAX})
		}
		n, err := addEntry(tw, path, rel)
		if errors.Is(err, fs.ErrNotExist) {
			st.Missing++
			return nil
		}
		if n >= 0 {
			st.Files++
			st.Bytes += n
		}
		return err
	})
	if err != nil {
		return st, err
	}
	return st, tw.Close()
}

// addEntry writes one file or symlink; it returns the bytes of content
// written, or -1 for an entry skipped because git cannot hold its kind.
func addEntry(tw *tar.Writer, path, name string) (int64, error) {
	info, err := os.Lstat(path)
	if err != nil {
		return 0, err
	}
	hdr := &tar.Header{Name: filepath.ToSlash(name), ModTime: info.ModTime(), Format: tar.FormatPAX}
	switch {
	case info.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(path)
		if err != nil {
			return 0, err
		}
		hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, target, 0o777
		return 0, tw.WriteHeader(hdr)
	case info.Mode().IsRegular():
		f, err := os.Open(path)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, int64(info.Mode().Perm()), info.Size()
		if err := tw.WriteHeader(hdr); err != nil {
			return 0, err
		}
		n, err := io.Copy(tw, f)
		if err != nil {
			return n, fmt.Errorf("copy %s (did it change while being copied?): %w", name, err)
		}
		if n != info.Size() {
			return n, fmt.Errorf("copy %s: it shrank from %d to %d bytes while being copied", name, info.Size(), n)
		}
		return n, nil
	}
	return -1, nil
}
