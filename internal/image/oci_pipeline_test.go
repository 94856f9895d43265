package image_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/disk"
	"github.com/kilnvm/kiln/internal/image"
	oc "github.com/kilnvm/kiln/internal/image/ocitest"
)

// TestPullOCITamperedLayer: layers download in parallel while earlier ones
// are applied, so a registry serving one layer with the wrong content
// (same size) must still fail the whole pull: nothing committed, no blob
// of that layer in the cache, no partial download left. Once the registry
// behaves, the pull reuses the layers it had checked and downloads only
// the bad one again.
func TestPullOCITamperedLayer(t *testing.T) {
	cacheDir := filepath.Join(t.TempDir(), "oci")
	e := newEnv(t, image.WithCacheDir(cacheDir))
	reg := oc.Serve(t)
	ctx := context.Background()
	layers := [][]byte{
		oc.Tar(t, oc.Dir("a", 0o755), oc.File("a/one", randomHex(64<<10), 0o644)),
		oc.Tar(t, oc.File("a/two", randomHex(64<<10), 0o644)),
		oc.Tar(t, oc.File("a/three", "3", 0o644), oc.Whiteout("a/.wh.one")),
		oc.Tar(t, oc.File("a/two", "2", 0o644)), // the same path again
	}
	img := oc.Image(t, v1.Config{}, layers...)
	ref := reg.Push(t, "kiln/tamper:1", img)
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	bad, err := ls[1].Digest()
	if err != nil {
		t.Fatal(err)
	}

	reg.Corrupt(bad.String())
	gets := reg.BlobGets()
	_, _, err = e.store.PullOCI(ctx, "tampered", ref, image.BuildOptions{}, nil)
	if err == nil || !strings.Contains(err.Error(), "layer 2/4") {
		t.Fatalf("pull of a tampered layer: %v, want a failure naming layer 2/4", err)
	}
	if api.ClassOf(err) == api.ClassInternal {
		t.Errorf("tampered layer error is not classed: %v", err)
	}
	e.assertStoreHolds(t)
	if _, err := os.Stat(filepath.Join(cacheDir, "blobs", "sha256", bad.Hex)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the tampered blob is in the cache: %v", err)
	}
	partial, _ := filepath.Glob(filepath.Join(cacheDir, "blobs", "sha256", ".partial-*"))
	if len(partial) != 0 {
		t.Errorf("partial downloads left: %v", partial)
	}
	if n := reg.BlobGets() - gets; n > 5 { // the config blob, then each layer at most once
		t.Errorf("%d blob downloads for 4 layers", n)
	}

	reg.Corrupt("")
	cached, _ := filepath.Glob(filepath.Join(cacheDir, "blobs", "sha256", "[0-9a-f]*"))
	gets = reg.BlobGets()
	var last image.PullProgress
	got, _, err := e.store.PullOCI(ctx, "fine", ref, image.BuildOptions{}, func(p image.PullProgress) { last = p })
	if err != nil {
		t.Fatal(err)
	}
	if n := reg.BlobGets() - gets; n != int64(1+4-len(cached)) { // the config blob too
		t.Errorf("second pull downloaded %d blobs with %d of 4 cached", n, len(cached))
	}
	if last.Stage != "build ext4" || last.LayersDone != 4 || last.BytesDone != last.Bytes {
		t.Errorf("final progress %+v", last)
	}
	for path, want := range map[string]string{"/a/two": "2", "/a/three": "3"} {
		if b, err := disk.ReadExt4File(ctx, runner, got.RootFS, path); err != nil || string(b) != want {
			t.Errorf("%s holds %q (%v), want %q", path, b, err, want)
		}
	}
	if _, err := disk.StatExt4(ctx, runner, got.RootFS, "/a/one"); err == nil {
		t.Error("/a/one survived its whiteout")
	}
	e.assertStoreHolds(t, "fine")
}
