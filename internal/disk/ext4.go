package disk

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/system"
)

// MinExt4Size is the smallest filesystem kiln makes: below it mke2fs
// switches to layouts (1 KiB blocks, no journal) kiln does not want.
const MinExt4Size = 16 << 20

// Ext4Options describes a filesystem for MakeExt4.
type Ext4Options struct {
	// Label is the volume label (at most 16 bytes).
	Label string
	// SourceDir, when set, populates the filesystem from this tree
	// (mkfs.ext4 -d): owners, modes, special bits, times, device nodes,
	// hard links and extended attributes are kept. The root directory is
	// owned by root whatever the tree's top directory says.
	SourceDir string
	// Inodes is the minimum number of inodes (mkfs.ext4 -N); 0 leaves the
	// mke2fs default of one inode per 16 KiB.
	Inodes int64
}

// MakeExt4 creates the file path (which must not exist) of size bytes and
// makes an ext4 filesystem in it. On error path does not exist afterwards.
func MakeExt4(ctx context.Context, runner system.Runner, path string, size int64, opts Ext4Options) (err error) {
	if size < MinExt4Size {
		return fmt.Errorf("ext4 size %d: at least %d MiB: %w", size, MinExt4Size>>20, api.ErrBadRequest)
	}
	if len(opts.Label) > 16 {
		return fmt.Errorf("ext4 label %q: longer than 16 bytes: %w", opts.Label, api.ErrBadRequest)
	}
	if opts.Inodes < 0 {
		return fmt.Errorf("ext4 inode count %d: %w", opts.Inodes, api.ErrBadRequest)
	}
	if opts.SourceDir != "" {
		fi, err := os.Stat(opts.SourceDir)
		if err != nil {
			return fmt.Errorf("ext4 source tree: %w", err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("ext4 source tree %s is not a directory: %w", opts.SourceDir, api.ErrBadRequest)
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("make ext4 %s: %w", path, api.ErrAlreadyExists)
		}
		return fmt.Errorf("make ext4: %w", err)
	}
	defer func() {
		if err != nil {
			os.Remove(path)
		}
	}()
	// Size the file first so mke2fs sees a sparse file of the final size;
	// the size argument below then only confirms it.
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		return fmt.Errorf("size %s: %w", path, err)
	}
	args := []string{"-F", "-q", "-E", "root_owner=0:0"}
	if opts.Label != "" {
		args = append(args, "-L", opts.Label)
	}
	if opts.SourceDir != "" {
		args = append(args, "-d", opts.SourceDir)
	}
	if opts.Inodes > 0 {
		args = append(args, "-N", strconv.FormatInt(opts.Inodes, 10))
	}
	args = append(args, path, strconv.FormatInt(size/1024, 10)+"k")
	if _, err := system.Command(ctx, runner, "mkfs.ext4", args...); err != nil {
		return fmt.Errorf("make ext4 in %s: %w", path, err)
	}
	return nil
}

// CreateExt4 makes an empty ext4 filesystem of size bytes in the new file
// path, labelled label: a VM's work disk.
func CreateExt4(ctx context.Context, runner system.Runner, path string, size int64, label string) error {
	return MakeExt4(ctx, runner, path, size, Ext4Options{Label: label})
}

// Grow enlarges the ext4 filesystem in the file path to size bytes: the
// file is extended (sparsely) and resize2fs grows the filesystem into it.
// The filesystem must not be in use. A size equal to the current one does
// nothing; a smaller one is api.ErrBadRequest. On error the file keeps its
// old size.
func Grow(ctx context.Context, runner system.Runner, path string, size int64) error {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("grow disk %s: %w", path, api.ErrNotFound)
		}
		return fmt.Errorf("grow disk: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("grow disk %s: not a regular file: %w", path, api.ErrBadRequest)
	}
	old := fi.Size()
	switch {
	case size < old:
		return fmt.Errorf("grow disk %s to %d bytes: smaller than its %d bytes, and disks cannot shrink: %w", path, size, old, api.ErrBadRequest)
	case size == old:
		return nil
	}
	// resize2fs refuses a filesystem mounted since its last check (a disk a
	// VM has used), so check it first. e2fsck exits 1 when it fixed
	// something, which is still a filesystem fit to grow.
	if _, err := system.Command(ctx, runner, "e2fsck", "-f", "-p", path); err != nil && exitCode(err) != 1 {
		return fmt.Errorf("grow disk %s: check filesystem: %w", path, err)
	}
	if err := os.Truncate(path, size); err != nil {
		return fmt.Errorf("grow disk %s: extend file: %w", path, err)
	}
	if _, err := system.Command(ctx, runner, "resize2fs", path); err != nil {
		if terr := os.Truncate(path, old); terr != nil {
			err = errors.Join(err, fmt.Errorf("restore size: %w", terr))
		}
		return fmt.Errorf("grow disk %s: %w", path, err)
	}
	return nil
}

// exitCode digs a process exit status out of a Runner error, or -1.
func exitCode(err error) int {
	var ec interface{ ExitCode() int }
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return -1
}

// Ext4Inode is what debugfs says about one file in an ext4 image.
type Ext4Inode struct {
	Inode int64
	// Type is debugfs's word: "regular", "directory", "symlink",
	// "character special", "block special", "FIFO", "socket".
	Type string
	// Mode holds the permission and set-id/sticky bits (e.g. 0o4755).
	Mode  uint32
	UID   int
	GID   int
	Size  int64
	Links int
	Mtime time.Time
	// LinkTarget is the target of a symlink short enough to live in the
	// inode ("fast link"); empty otherwise.
	LinkTarget string
	// Major and Minor are set for device nodes.
	Major, Minor int
}

// StatExt4 reads the inode of the absolute path guestPath inside the ext4
// image file image, without mounting it. A missing path is api.ErrNotFound.
func StatExt4(ctx context.Context, runner system.Runner, image, guestPath string) (Ext4Inode, error) {
	if err := checkDebugfsPath(guestPath); err != nil {
		return Ext4Inode{}, err
	}
	out, err := system.Command(ctx, runner, "debugfs", "-R", "stat \""+guestPath+"\"", image)
	if err != nil {
		return Ext4Inode{}, fmt.Errorf("stat %s in %s: %w", guestPath, image, err)
	}
	ino, err := parseDebugfsStat(out)
	if err != nil {
		return Ext4Inode{}, fmt.Errorf("stat %s in %s: %w", guestPath, image, err)
	}
	return ino, nil
}

// ReadExt4File returns the content of the regular file guestPath inside the
// ext4 image file image.
func ReadExt4File(ctx context.Context, runner system.Runner, image, guestPath string) ([]byte, error) {
	// debugfs exits 0 and prints nothing to stdout for a missing file, so
	// stat first to tell a missing file from an empty one.
	ino, err := StatExt4(ctx, runner, image, guestPath)
	if err != nil {
		return nil, err
	}
	if ino.Type != "regular" {
		return nil, fmt.Errorf("read %s in %s: a %s, not a regular file: %w", guestPath, image, ino.Type, api.ErrBadRequest)
	}
	out, err := system.Command(ctx, runner, "debugfs", "-R", "cat \""+guestPath+"\"", image)
	if err != nil {
		return nil, fmt.Errorf("read %s in %s: %w", guestPath, image, err)
	}
	if int64(len(out)) != ino.Size {
		return nil, fmt.Errorf("read %s in %s: got %d bytes of %d", guestPath, image, len(out), ino.Size)
	}
	return out, nil
}

// checkDebugfsPath keeps paths to what debugfs's request parser reads as
// one quoted argument.
func checkDebugfsPath(p string) error {
	if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "\"\\\n\x00") {
		return fmt.Errorf("ext4 path %q: want an absolute path without quotes, backslashes or newlines: %w", p, api.ErrBadRequest)
	}
	return nil
}

// parseDebugfsStat parses the output of debugfs's stat request:
//
//	Inode: 13   Type: regular    Mode:  0640   Flags: 0x80000
//	User:     0   Group:    42   Project:     0   Size: 3
//	Links: 1   Blockcount: 2
//	 mtime: 0x3a4fc880:00000000 -- Mon Jan  1 00:00:00 2001
//	Fast link dest: "/bin/busybox"
//	Device major/minor number: 01:03 (hex 01:03)
func parseDebugfsStat(out []byte) (Ext4Inode, error) {
	var ino Ext4Inode
	found := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "Inode:"):
			found = true
			// "Type:" may be two words ("character special"), so split on
			// the field names rather than on spaces.
			ino.Inode, _ = strconv.ParseInt(fieldAfter(line, "Inode:", "Type:"), 10, 64)
			ino.Type = fieldAfter(line, "Type:", "Mode:")
			m, err := strconv.ParseUint(fieldAfter(line, "Mode:", "Flags:"), 8, 32)
			if err != nil {
				return ino, fmt.Errorf("parse debugfs mode in %q: %w", line, err)
			}
			ino.Mode = uint32(m)
		case strings.HasPrefix(line, "User:"):
			ino.UID, _ = strconv.Atoi(fieldAfter(line, "User:", "Group:"))
			ino.GID, _ = strconv.Atoi(fieldAfter(line, "Group:", "Project:"))
			ino.Size, _ = strconv.ParseInt(fieldAfter(line, "Size:", ""), 10, 64)
		case strings.HasPrefix(line, "Links:"):
			ino.Links, _ = strconv.Atoi(fieldAfter(line, "Links:", "Blockcount:"))
		case strings.HasPrefix(line, "mtime:"):
			hex := fieldAfter(line, "mtime:", "--")
			sec, _, _ := strings.Cut(hex, ":")
			if s, err := strconv.ParseInt(strings.TrimPrefix(sec, "0x"), 16, 64); err == nil {
				ino.Mtime = time.Unix(s, 0)
			}
		case strings.HasPrefix(line, "Fast link dest:"):
			ino.LinkTarget, _ = strconv.Unquote(strings.TrimSpace(strings.TrimPrefix(line, "Fast link dest:")))
		case strings.HasPrefix(line, "Device major/minor number:"):
			mm, _, _ := strings.Cut(strings.TrimSpace(strings.TrimPrefix(line, "Device major/minor number:")), " ")
			maj, min, _ := strings.Cut(mm, ":")
			ino.Major, _ = strconv.Atoi(maj)
			ino.Minor, _ = strconv.Atoi(min)
		}
	}
	if !found {
		return ino, fmt.Errorf("no such file: %w", api.ErrNotFound)
	}
	return ino, nil
}

// fieldAfter returns the trimmed text between the labels start and end on
// a debugfs line (end "" means the rest of the line).
func fieldAfter(line, start, end string) string {
	_, rest, ok := strings.Cut(line, start)
	if !ok {
		return ""
	}
	if end != "" {
		rest, _, _ = strings.Cut(rest, end)
	}
	return strings.TrimSpace(rest)
}
