package image_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/disk"
	"github.com/kilnvm/kiln/internal/image"
	oc "github.com/kilnvm/kiln/internal/image/ocitest"
	"github.com/kilnvm/kiln/internal/testutil"
)

func zstdOf(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestImportZstdTarball imports a zstd rootfs tarball, written by the
// zstd library and by the zstd tool (with the longest window it writes by
// default, --long=27), as it imports a gzipped one: content, owners, modes
// and set-id bits kept.
func TestImportZstdTarball(t *testing.T) {
	e := newEnv(t)
	raw := oc.Tar(t,
		oc.Dir("etc", 0o755),
		oc.File("etc/hostname", "box\n", 0o644),
		oc.File("etc/shadow", "root:*:19000::::::\n", 0o640).Owned(0, 42),
		oc.Dir("usr", 0o755), oc.Dir("usr/bin", 0o755),
		oc.File("usr/bin/sudo", "sudo", 0o4755),
		oc.Dir("home", 0o755), oc.Dir("home/dev", 0o700).Owned(1000, 1000),
		oc.File("home/dev/.profile", "export A=1\n", 0o600).Owned(1000, 1000),
		oc.Symlink("bin", "usr/bin"),
	)
	variants := map[string]func(t *testing.T) []byte{
		"library": func(t *testing.T) []byte { return zstdOf(t, raw) },
		"tool": func(t *testing.T) []byte {
			testutil.RequireCommand(t, "zstd")
			cmd := exec.Command("zstd", "-q", "--long=27", "-c")
			cmd.Stdin = bytes.NewReader(raw)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("zstd: %v", err)
			}
			return out
		},
	}
	for name, compress := range variants {
		t.Run(name, func(t *testing.T) {
			data := compress(t)
			if !bytes.HasPrefix(data, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
				t.Fatalf("fixture is not zstd: % x", data[:4])
			}
			img, err := e.store.ImportTar(context.Background(), "z"+name, bytes.NewReader(data), image.BuildOptions{Size: 32 << 20})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = e.store.Remove(context.Background(), "z"+name) })
			if got, err := disk.ReadExt4File(context.Background(), runner, img.RootFS, "/etc/hostname"); err != nil || string(got) != "box\n" {
				t.Fatalf("hostname %q, %v", got, err)
			}
			for _, tc := range []struct {
				path     string
				mode     uint32
				uid, gid int
			}{
				{"/etc/shadow", 0o640, 0, 42},
				{"/usr/bin/sudo", 0o4755, 0, 0},
				{"/home/dev", 0o700, 1000, 1000},
				{"/home/dev/.profile", 0o600, 1000, 1000},
			} {
				if ino := stat(t, img.RootFS, tc.path); ino.Mode != tc.mode || ino.UID != tc.uid || ino.GID != tc.gid {
					t.Errorf("%s: %+v, want %#o %d:%d", tc.path, ino, tc.mode, tc.uid, tc.gid)
				}
			}
			if ino := stat(t, img.RootFS, "/bin"); ino.Type != "symlink" || ino.LinkTarget != "usr/bin" {
				t.Errorf("/bin: %+v", ino)
			}
		})
	}
}

// TestPullOCIZstdLayers pulls the layered image with every layer zstd
// (OCI media type tar+zstd), then with gzip and zstd layers mixed, and
// checks the flattened tree as for the gzipped image.
func TestPullOCIZstdLayers(t *testing.T) {
	cfg, layers := layeredLayers(t)
	reg := oc.Serve(t)
	for name, zstdLayers := range map[string][]bool{
		"all-zstd": {true, true, true},
		"mixed":    {false, true, false},
	} {
		t.Run(name, func(t *testing.T) {
			cacheDir := filepath.Join(t.TempDir(), "oci")
			e := newEnv(t, image.WithCacheDir(cacheDir))
			ls := make([]oc.Layer, len(layers))
			wantZstd := 0
			for i, l := range layers {
				ls[i] = oc.Gzip(l)
				if zstdLayers[i] {
					ls[i] = oc.Zstd(l)
					wantZstd++
				}
			}
			ref := reg.Push(t, "kiln/"+name+":1", oc.ImageOf(t, cfg, ls...))
			img, _, err := e.store.PullOCI(context.Background(), "layered", ref, image.BuildOptions{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			// The registry served what the test means: count the cached
			// layers by their magic.
			blobs, _ := filepath.Glob(filepath.Join(cacheDir, "blobs", "sha256", "*"))
			gotZstd, gotGzip := 0, 0
			for _, b := range blobs {
				data, err := os.ReadFile(b)
				if err != nil {
					t.Fatal(err)
				}
				switch {
				case bytes.HasPrefix(data, []byte{0x28, 0xb5, 0x2f, 0xfd}):
					gotZstd++
				case bytes.HasPrefix(data, []byte{0x1f, 0x8b}):
					gotGzip++
				}
			}
			if gotZstd != wantZstd || gotGzip != len(layers)-wantZstd {
				t.Fatalf("cache holds %d zstd and %d gzip layers, want %d and %d", gotZstd, gotGzip, wantZstd, len(layers)-wantZstd)
			}
			checkLayeredTree(t, img.RootFS)
			e.assertStoreHolds(t, "layered")
		})
	}
}

// TestPullOCIZstdLimits: zstd layers are small on the wire, so the limits
// bite once they are decompressed. A layer whose file inflates past the
// limit is refused naming it and leaves nothing; a layer whose tar is
// followed by a long run of compressed zeros is read only as far as the
// tar's end plus a bounded trailer, and pulls.
func TestPullOCIZstdLimits(t *testing.T) {
	e := newEnv(t, image.WithCacheDir(filepath.Join(t.TempDir(), "oci")), image.WithLimits(image.Limits{MaxEntries: 100, MaxFileSize: 1 << 20, MaxTotalSize: 4 << 20}))
	reg := oc.Serve(t)
	ctx := context.Background()

	big := oc.Tar(t, oc.File("big", string(make([]byte, 8<<20)), 0o644))
	ref := reg.Push(t, "kiln/zbomb:1", oc.ImageOf(t, v1.Config{}, oc.Zstd(oc.Tar(t, oc.File("ok", "ok", 0o644))), oc.Zstd(big)))
	_, _, err := e.store.PullOCI(ctx, "zbomb", ref, image.BuildOptions{}, nil)
	if !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), `"big"`) || !strings.Contains(err.Error(), "exceeds the limit") {
		t.Fatalf("8 MiB file in a zstd layer: %v, want bad_request naming it", err)
	}
	e.assertStoreHolds(t)

	// 256 MiB of zeros after the tar's end: far past the store's limits
	// if it were all decompressed.
	trailer := zstdOf(t, append(oc.Tar(t, oc.File("hello", "world", 0o644)), make([]byte, 256<<20)...))
	ref = reg.Push(t, "kiln/ztrailer:1", oc.ImageOf(t, v1.Config{}, oc.Layer{Tar: trailer, Zstd: true}))
	img, _, err := e.store.PullOCI(ctx, "ztrailer", ref, image.BuildOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := disk.ReadExt4File(ctx, runner, img.RootFS, "/hello"); err != nil || string(b) != "world" {
		t.Fatalf("/hello holds %q, %v", b, err)
	}
	e.assertStoreHolds(t, "ztrailer")
}
