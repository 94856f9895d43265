// Package disktest is the conformance suite every disk.Backend runs: the
// same checks of content, isolation, sparseness and failure behaviour,
// whatever the mechanism behind the clone.
package disktest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/disk"
)

// SourceSize is the apparent size of the sparse source file the suite
// clones; only sourceData bytes of it hold data.
const SourceSize = 64 << 20

// dataRegions are the offsets written in the source file; the rest are holes.
func dataRegions() []int64 { return []int64{0, 1 << 20, 17<<20 + 4096, SourceSize - 8192} }

const regionLen = 8192

// RunBackendSuite runs the conformance tests for b on files in dir, which
// must be a directory where b.Probe succeeds. It leaves nothing in dir.
func RunBackendSuite(t *testing.T, b disk.Backend, dir string) {
	t.Helper()
	ctx := context.Background()
	if err := b.Probe(ctx, dir); err != nil {
		t.Fatalf("%s: probe in %s: %v", b.Name(), dir, err)
	}
	// Each subtest uses its own files so a failure in one does not cascade.
	sub := func(t *testing.T, name string) (src, dst string) {
		t.Helper()
		d, err := os.MkdirTemp(dir, "disktest-"+name+"-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		src = filepath.Join(d, "src.img")
		writeSparseSource(t, src)
		return src, filepath.Join(d, "dst.img")
	}

	t.Run("IdenticalContent", func(t *testing.T) {
		src, dst := sub(t, "identical")
		if err := b.Clone(ctx, src, dst); err != nil {
			t.Fatalf("clone: %v", err)
		}
		if got, want := fileHash(t, dst), fileHash(t, src); got != want {
			t.Fatalf("clone content differs from source")
		}
		si, di := stat(t, src), stat(t, dst)
		if di.Size() != si.Size() {
			t.Fatalf("clone size %d, source %d", di.Size(), si.Size())
		}
		if di.Mode().Perm() != si.Mode().Perm() {
			t.Fatalf("clone mode %v, source %v", di.Mode(), si.Mode())
		}
	})

	t.Run("WritesDoNotReachSource", func(t *testing.T) {
		src, dst := sub(t, "isolation")
		before := fileHash(t, src)
		if err := b.Clone(ctx, src, dst); err != nil {
			t.Fatalf("clone: %v", err)
		}
		f, err := os.OpenFile(dst, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		// Overwrite a data region and fill a hole.
		if _, err := f.WriteAt(bytes.Repeat([]byte{0xee}, regionLen), dataRegions()[1]); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(bytes.Repeat([]byte{0xdd}, regionLen), 40<<20); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if fileHash(t, src) != before {
			t.Fatal("writing to the clone changed the source")
		}
		if fileHash(t, dst) == before {
			t.Fatal("write to the clone did not change it")
		}
	})

	t.Run("HolesPreserved", func(t *testing.T) {
		src, dst := sub(t, "holes")
		if err := b.Clone(ctx, src, dst); err != nil {
			t.Fatalf("clone: %v", err)
		}
		allocated := stat(t, dst).Sys().(*syscall.Stat_t).Blocks * 512
		// The data is 32 KiB; allow generous slack for filesystem
		// granularity, but far below the 64 MiB a full copy would take.
		if limit := int64(4 << 20); allocated > limit {
			t.Fatalf("clone allocates %d bytes for %d bytes of data (limit %d): holes were filled", allocated, len(dataRegions())*regionLen, limit)
		}
	})

	t.Run("DestinationExists", func(t *testing.T) {
		src, dst := sub(t, "exists")
		if err := os.WriteFile(dst, []byte("precious"), 0o600); err != nil {
			t.Fatal(err)
		}
		err := b.Clone(ctx, src, dst)
		if !errors.Is(err, api.ErrAlreadyExists) {
			t.Fatalf("clone onto existing file: got %v, want already exists", err)
		}
		if got, _ := os.ReadFile(dst); string(got) != "precious" {
			t.Fatalf("existing destination changed to %q", got)
		}
	})

	t.Run("SourceMissing", func(t *testing.T) {
		src, dst := sub(t, "missing")
		os.Remove(src)
		err := b.Clone(ctx, src, dst)
		if !errors.Is(err, api.ErrNotFound) {
			t.Fatalf("clone of missing source: got %v, want not found", err)
		}
		assertAbsent(t, dst)
	})

	t.Run("Cancelled", func(t *testing.T) {
		src, dst := sub(t, "cancel")
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		err := b.Clone(cctx, src, dst)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("clone with cancelled context: got %v, want context.Canceled", err)
		}
		assertAbsent(t, dst)
	})

	t.Run("Remove", func(t *testing.T) {
		src, dst := sub(t, "remove")
		if err := b.Clone(ctx, src, dst); err != nil {
			t.Fatalf("clone: %v", err)
		}
		if err := b.Remove(ctx, dst); err != nil {
			t.Fatalf("remove: %v", err)
		}
		assertAbsent(t, dst)
		if err := b.Remove(ctx, dst); err != nil {
			t.Fatalf("remove of a missing disk should succeed, got %v", err)
		}
		if _, err := os.Stat(src); err != nil {
			t.Fatalf("removing the clone affected the source: %v", err)
		}
	})
}

// writeSparseSource writes a SourceSize file with data only at dataRegions.
func writeSparseSource(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i, off := range dataRegions() {
		b := bytes.Repeat([]byte{byte(0x10 + i)}, regionLen)
		copy(b, "kiln disktest region")
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(SourceSize); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

func stat(t *testing.T, path string) os.FileInfo {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

func assertAbsent(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s should not exist after a failed clone (lstat: %v)", path, err)
	}
}
