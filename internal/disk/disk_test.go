package disk_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/disk"
	"github.com/kilnvm/kiln/internal/disk/disktest"
	"github.com/kilnvm/kiln/internal/system"
	"github.com/kilnvm/kiln/internal/testutil"
)

func TestSparseCopySuite(t *testing.T) {
	disktest.RunBackendSuite(t, disk.SparseCopy{}, t.TempDir())
}

func TestReflinkSuite(t *testing.T) {
	for _, fs := range []string{"btrfs", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			dir := mountLoopFS(t, fs)
			disktest.RunBackendSuite(t, disk.Reflink{}, dir)
			if got := disk.FSType(dir); got != fs {
				t.Errorf("FSType(%s) = %q, want %q", dir, got, fs)
			}
		})
	}
}

func TestReflinkProbeRefusesExt4(t *testing.T) {
	dir := t.TempDir()
	if fs := disk.FSType(dir); fs != "ext4" {
		t.Skipf("temp dir is on %s, not ext4", fs)
	}
	err := disk.Reflink{}.Probe(context.Background(), dir)
	if err == nil || !strings.Contains(err.Error(), "reflink: filesystem ext4 does not support FICLONE") {
		t.Fatalf("probe on ext4: got %v, want a FICLONE refusal naming ext4", err)
	}
	assertEmptyDir(t, dir)
}

func TestReflinkAcrossFilesystemsLeavesNothing(t *testing.T) {
	btrfs := mountLoopFS(t, "btrfs")
	src := filepath.Join(btrfs, "src.img")
	if err := os.WriteFile(src, bytes.Repeat([]byte("x"), 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	dst := filepath.Join(other, "dst.img")
	if err := (disk.Reflink{}).Clone(context.Background(), src, dst); err == nil {
		t.Fatal("reflink across filesystems succeeded")
	}
	assertEmptyDir(t, other)
}

func TestChoose(t *testing.T) {
	ctx := context.Background()
	ext4 := t.TempDir()
	if fs := disk.FSType(ext4); fs != "ext4" {
		t.Skipf("temp dir is on %s, not ext4", fs)
	}
	b, results := disk.Choose(ctx, ext4, disk.Reflink{}, disk.SparseCopy{})
	if b == nil || b.Name() != "copy" {
		t.Fatalf("on ext4 chose %v, want copy", b)
	}
	if len(results) != 2 || results[0].OK() || !results[1].OK() {
		t.Fatalf("probe results %v: want reflink skipped, copy ok", results)
	}
	if s := results[0].String(); !strings.HasPrefix(s, "reflink: skip (reflink: filesystem ext4") {
		t.Errorf("reflink result reads %q", s)
	}
	if s := results[1].String(); s != "copy: ok" {
		t.Errorf("copy result reads %q", s)
	}

	t.Run("btrfs", func(t *testing.T) {
		dir := mountLoopFS(t, "btrfs")
		b, results := disk.Choose(ctx, dir, disk.Reflink{}, disk.SparseCopy{})
		if b == nil || b.Name() != "reflink" || len(results) != 2 || !results[0].OK() || !results[1].OK() {
			t.Fatalf("on btrfs chose %v with %v, want reflink and every probe ok", b, results)
		}
	})

	t.Run("NoneUsable", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "absent")
		b, results := disk.Choose(ctx, missing, disk.Reflink{}, disk.SparseCopy{})
		if b != nil {
			t.Fatalf("chose %s for a missing directory", b.Name())
		}
		for _, r := range results {
			if r.OK() || !strings.Contains(r.Err.Error(), "cannot create files") {
				t.Errorf("probe of missing dir: %v", r)
			}
		}
	})
}

// cancelAfter is a context that reports cancellation after its Err method
// has been asked n times, to cancel a copy part-way at a known point.
type cancelAfter struct {
	context.Context
	n int
}

func (c *cancelAfter) Err() error {
	if c.n--; c.n < 0 {
		return context.Canceled
	}
	return nil
}

func TestSparseCopyCancelledMidway(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	// 8 MiB of data: eight 1 MiB chunks, so a cancel after three checks
	// lands in the middle of the copy.
	if err := os.WriteFile(src, bytes.Repeat([]byte{0xab}, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst.img")
	err := disk.SparseCopy{}.Clone(&cancelAfter{Context: context.Background(), n: 3}, src, dst)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if _, err := os.Lstat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("partial clone left behind: %v", err)
	}
}

func TestSparseCopyZeroBlocksBecomeHoles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	// A dense file (no holes for SEEK_HOLE to find) that is mostly zeros.
	b := make([]byte, 16<<20)
	copy(b[5<<20:], "data")
	if err := os.WriteFile(src, b, 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst.img")
	if err := (disk.SparseCopy{}).Clone(context.Background(), src, dst); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil || !bytes.Equal(got, b) {
		t.Fatalf("content differs (err %v)", err)
	}
	if blocks := allocated(t, dst); blocks > 1<<20 {
		t.Fatalf("clone of a zero-filled file allocates %d bytes", blocks)
	}
}

func TestRemoveRefusesDirectory(t *testing.T) {
	dir := t.TempDir()
	for _, b := range []disk.Backend{disk.Reflink{}, disk.SparseCopy{}} {
		if err := b.Remove(context.Background(), dir); !errors.Is(err, api.ErrBadRequest) {
			t.Errorf("%s: remove of a directory: got %v, want bad request", b.Name(), err)
		}
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatal(err)
	}
}

func TestCloneRefusesNonRegularSource(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "dst")
	for _, b := range []disk.Backend{disk.Reflink{}, disk.SparseCopy{}} {
		if err := b.Clone(context.Background(), dir, dst); !errors.Is(err, api.ErrBadRequest) {
			t.Errorf("%s: clone of a directory: got %v, want bad request", b.Name(), err)
		}
		if _, err := os.Lstat(dst); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: destination created", b.Name())
		}
	}
}

// mountLoopFS makes a filesystem of type fs in a file, loop-mounts it and
// returns the mount point; it is unmounted and removed when t ends.
func mountLoopFS(t *testing.T, fs string) string {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireCommand(t, "mkfs."+fs)
	dir := t.TempDir()
	img := filepath.Join(dir, fs+".img")
	// xfs wants at least 300 MiB; the file is sparse, so this costs little.
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 512<<20); err != nil {
		t.Fatal(err)
	}
	run(t, "mkfs."+fs, "-q", img)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "-o", "loop", img, mnt)
	t.Cleanup(func() {
		// The loop device is set to auto-clear, so unmounting frees it.
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := system.Command(context.Background(), system.ExecRunner{}, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	out := run(t, "stat", "-c", "%b %B", path)
	var blocks, unit int64
	if _, err := fmt.Sscan(out, &blocks, &unit); err != nil {
		t.Fatalf("parse stat output %q: %v", out, err)
	}
	return blocks * unit
}

func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("left behind in %s: %s", dir, e.Name())
	}
}
