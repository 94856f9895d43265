package image_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/disk"
	"github.com/kilnvm/kiln/internal/image"
	oc "github.com/kilnvm/kiln/internal/image/ocitest"
	"github.com/kilnvm/kiln/internal/lockorder"
)

// layeredImage is a three-layer image exercising whiteouts, opaque
// directories, hard links, set-id files, owners and symlinks.
func layeredImage(t *testing.T) v1.Image {
	cfg, layers := layeredLayers(t)
	return oc.Image(t, cfg, layers...)
}

// layeredLayers is layeredImage's config and layers (uncompressed tar
// streams, oldest first); checkLayeredTree checks their flattened tree.
func layeredLayers(t *testing.T) (v1.Config, [][]byte) {
	base := oc.Tar(t,
		oc.Dir("etc", 0o755),
		oc.File("etc/shadow", "root:*:19000::::::\n", 0o640).Owned(0, 42),
		oc.Dir("usr", 0o755), oc.Dir("usr/bin", 0o755), oc.Dir("usr/lib", 0o755),
		oc.File("usr/bin/sudo", "sudo", 0o4755),
		oc.File("usr/bin/tool", "v1", 0o755),
		oc.Symlink("lib", "usr/lib"),
		oc.File("usr/lib/libc.so", "libc", 0o644),
		oc.Dir("gone", 0o755), oc.File("gone/f", "f", 0o644),
		oc.Dir("a", 0o755), oc.File("a/x", "x", 0o644), oc.File("a/y", "y", 0o644),
		oc.Dir("opq", 0o750).Owned(1000, 1000), oc.File("opq/old", "old", 0o644), oc.Dir("opq/olddir", 0o755), oc.File("opq/olddir/f", "f", 0o644),
		oc.Dir("home", 0o755), oc.Dir("home/user", 0o700).Owned(1000, 1000),
		oc.File("home/user/.profile", "export A=1\n", 0o600).Owned(1000, 1000),
		oc.File("data", "was a file", 0o644),
	)
	upper := oc.Tar(t,
		oc.Whiteout("gone/.wh..wh..opq"), // opaque on a dir that is then whited out
		oc.Whiteout(".wh.gone"),
		oc.Whiteout("a/.wh.x"),
		oc.File("a/z", "z", 0o644), oc.Whiteout("a/.wh.z"), // same layer: z survives
		oc.File("opq/new", "new", 0o644),
		oc.Whiteout("opq/.wh..wh..opq"),
		oc.File("usr/bin/tool", "v2", 0o755),
		oc.File("lib/added.so", "added", 0o644), // through the symlink lib -> usr/lib
		oc.Whiteout(".wh.data"), oc.Dir("data", 0o755), oc.File("data/orig", "hl", 0o644),
		oc.Hardlink("data/link", "data/orig"),
	)
	top := oc.Tar(t,
		oc.File("usr/bin/passwd", "passwd", 0o4755),
		oc.Hardlink("usr/bin/sudo-link", "usr/bin/sudo"), // link to a lower layer's file
		oc.Dir("usr/lib", 0o755),                         // replaces nothing: a directory stays
		oc.Symlink("usr/bin/tool", "/usr/bin/passwd"),    // a symlink replaces a lower file
	)
	return v1.Config{
		Env: []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8"}, WorkingDir: "/home/user", User: "1000:1000",
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo hi"},
	}, [][]byte{base, upper, top}
}

func TestPullOCIFlattensLayers(t *testing.T) {
	e := newEnv(t, image.WithCacheDir(filepath.Join(t.TempDir(), "oci")))
	reg := oc.Serve(t)
	ref := reg.Push(t, "kiln/layered:1", layeredImage(t))
	ctx := context.Background()

	var stages []string
	img, shared, err := e.store.PullOCI(ctx, "layered", ref, image.BuildOptions{KernelName: "test"}, func(p image.PullProgress) {
		if len(stages) == 0 || stages[len(stages)-1] != p.Stage {
			stages = append(stages, p.Stage)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if shared || img.KernelName != "test" || !strings.HasPrefix(img.Digest, "sha256:") || !strings.HasPrefix(img.Source, "oci:"+ref+"@sha256:") {
		t.Fatalf("image %+v (shared %v)", img, shared)
	}
	if got := strings.Join(stages, ","); got != "resolve,download,extract,build ext4" {
		t.Errorf("progress stages %s", got)
	}
	c := img.Config
	if c == nil || c.WorkingDir != "/home/user" || c.User != "1000:1000" || strings.Join(c.Env, " ") != "PATH=/usr/bin:/bin LANG=C.UTF-8" ||
		strings.Join(c.Entrypoint, " ") != "/bin/sh -c" || strings.Join(c.Cmd, " ") != "echo hi" {
		t.Fatalf("runtime config %+v", c)
	}
	data, err := os.ReadFile(filepath.Join(e.dir, "layered", image.MetadataFile))
	if err != nil {
		t.Fatal(err)
	}
	var onDisk image.Image
	if err := json.Unmarshal(data, &onDisk); err != nil || onDisk.Config == nil || onDisk.Config.User != "1000:1000" || onDisk.Digest != img.Digest {
		t.Fatalf("image.json %s: %v", data, err)
	}
	checkLayeredTree(t, img.RootFS)
	e.assertStoreHolds(t, "layered")
}

func checkLayeredTree(t *testing.T, fs string) {
	t.Helper()
	ctx := context.Background()
	for _, tc := range []struct {
		path     string
		typ      string
		mode     uint32
		uid, gid int
		links    int
		body     string
	}{
		{"/etc/shadow", "regular", 0o640, 0, 42, 1, "root:*:19000::::::\n"},
		{"/usr/bin/sudo", "regular", 0o4755, 0, 0, 2, "sudo"},
		{"/usr/bin/sudo-link", "regular", 0o4755, 0, 0, 2, "sudo"},
		{"/usr/bin/passwd", "regular", 0o4755, 0, 0, 1, "passwd"},
		{"/usr/lib/libc.so", "regular", 0o644, 0, 0, 1, "libc"},
		{"/usr/lib/added.so", "regular", 0o644, 0, 0, 1, "added"},
		{"/a/y", "regular", 0o644, 0, 0, 1, "y"},
		{"/a/z", "regular", 0o644, 0, 0, 1, "z"},
		{"/opq", "directory", 0o750, 1000, 1000, 0, ""},
		{"/opq/new", "regular", 0o644, 0, 0, 1, "new"},
		{"/home/user", "directory", 0o700, 1000, 1000, 0, ""},
		{"/home/user/.profile", "regular", 0o600, 1000, 1000, 1, "export A=1\n"},
		{"/data", "directory", 0o755, 0, 0, 0, ""},
		{"/data/link", "regular", 0o644, 0, 0, 2, "hl"},
		{"/lib", "symlink", 0o777, 0, 0, 0, ""},
		{"/usr/bin/tool", "symlink", 0o777, 0, 0, 0, ""},
	} {
		ino := stat(t, fs, tc.path)
		if ino.Type != tc.typ || ino.Mode != tc.mode || ino.UID != tc.uid || ino.GID != tc.gid || (tc.links > 0 && ino.Links != tc.links) {
			t.Errorf("%s: %+v, want %s %#o %d:%d links %d", tc.path, ino, tc.typ, tc.mode, tc.uid, tc.gid, tc.links)
		}
		if tc.typ == "regular" {
			if b, err := disk.ReadExt4File(ctx, runner, fs, tc.path); err != nil || string(b) != tc.body {
				t.Errorf("%s holds %q (%v), want %q", tc.path, b, err, tc.body)
			}
		}
	}
	if ino := stat(t, fs, "/usr/bin/tool"); ino.LinkTarget != "/usr/bin/passwd" {
		t.Errorf("tool symlink -> %q", ino.LinkTarget)
	}
	for _, p := range []string{"/gone", "/a/x", "/opq/old", "/opq/olddir", "/opq/.wh..wh..opq", "/a/.wh.x", "/.wh.gone", "/data/.wh.x"} {
		if _, err := disk.StatExt4(ctx, runner, fs, p); err == nil {
			t.Errorf("%s exists in the flattened image", p)
		}
	}
}

// TestPullOCICoalesces starts two pulls of one name at once: the layers
// are downloaded once and both callers get the same image.
func TestPullOCICoalesces(t *testing.T) {
	// Checked: a pull nests the store's commit and flight locks under a
	// shared cacheMu, and a prune takes it exclusively.
	order := lockorder.New(true, lockorder.Level{image.LockCache}, lockorder.Level{image.LockStore, image.LockFlights})
	e := newEnv(t, image.WithCacheDir(filepath.Join(t.TempDir(), "oci")), image.WithLockOrder(order))
	reg := oc.Serve(t)
	ref := reg.Push(t, "kiln/layered:1", layeredImage(t))
	before := reg.BlobGets()
	var wg sync.WaitGroup
	imgs := make([]image.Image, 2)
	shared := make([]bool, 2)
	errs := make([]error, 2)
	start := make(chan struct{})
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			imgs[i], shared[i], errs[i] = e.store.PullOCI(context.Background(), "same", ref, image.BuildOptions{}, nil)
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("pull %d: %v", i, err)
		}
	}
	if shared[0] == shared[1] || !imgs[0].Created.Equal(imgs[1].Created) || imgs[0].Digest != imgs[1].Digest {
		t.Fatalf("want one pull shared by two callers; shared %v, images %+v / %+v", shared, imgs[0], imgs[1])
	}
	// Three layers plus the config blob, each fetched once.
	if got := reg.BlobGets() - before; got != 4 {
		t.Errorf("registry served %d blob downloads, want 4", got)
	}
	// A later pull of another name reuses the cached layers.
	before = reg.BlobGets()
	if _, _, err := e.store.PullOCI(context.Background(), "again", ref, image.BuildOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	if got := reg.BlobGets() - before; got != 1 { // the config blob only
		t.Errorf("second pull downloaded %d blobs, want 1 (config; layers cached)", got)
	}
	// Pruning reports the cache's bytes, dry-run first.
	dry, err := e.store.PruneCache(context.Background(), true)
	if err != nil || dry.Blobs != 3 || dry.Bytes <= 0 {
		t.Fatalf("dry-run prune: %+v, %v", dry, err)
	}
	res, err := e.store.PruneCache(context.Background(), false)
	if err != nil || res.Blobs != dry.Blobs || res.Bytes != dry.Bytes {
		t.Fatalf("prune: %+v, %v (dry run said %+v)", res, err, dry)
	}
	if again, _ := e.store.PruneCache(context.Background(), true); again.Blobs != 0 {
		t.Fatalf("after prune the cache holds %+v", again)
	}
	e.assertStoreHolds(t, "again", "same")
}

// TestPullOCIRejectsMaliciousLayers pulls images whose layers try to
// escape the tree or exhaust the host: each pull fails with a clear
// bad_request error naming the entry, the store holds nothing, and the
// file outside the tree is untouched.
func TestPullOCIRejectsMaliciousLayers(t *testing.T) {
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	sentinel := filepath.Join(outside, "sentinel")
	if err := os.WriteFile(sentinel, []byte("host"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, image.WithCacheDir(filepath.Join(base, "oci")), image.WithLimits(image.Limits{MaxFileSize: 1 << 20}))
	reg := oc.Serve(t)
	esc := "../../../../../../../../../../.." + outside
	cases := []struct {
		name   string
		layers [][]byte
		want   string
	}{
		{"dotdot", [][]byte{oc.Tar(t, oc.File("../../evil", "x", 0o644))}, `".." component`},
		{"absolute", [][]byte{oc.Tar(t, oc.File(sentinel, "x", 0o644))}, "absolute path"},
		{"hardlink-escape", [][]byte{oc.Tar(t, oc.Hardlink("x", esc+"/sentinel"))}, "hard link target"},
		{"hardlink-host", [][]byte{oc.Tar(t, oc.Hardlink("passwd", "etc/passwd"))}, "not a regular file extracted earlier"},
		{"whiteout-dotdot", [][]byte{oc.Tar(t, oc.Dir("d", 0o755)), oc.Tar(t, oc.Whiteout("d/.wh.."))}, "names no file"},
		{"unknown-marker", [][]byte{oc.Tar(t, oc.Whiteout("d/.wh..wh.plnk"))}, "unknown whiteout marker"},
		{"huge-file", [][]byte{oc.Tar(t, oc.File("big", strings.Repeat("x", 2<<20), 0o644))}, "exceeds the limit"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ref := reg.Push(t, "kiln/evil-"+tc.name+":1", oc.Image(t, v1.Config{}, tc.layers...))
			_, _, err := e.store.PullOCI(context.Background(), "evil", ref, image.BuildOptions{}, nil)
			if err == nil || !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want bad_request with %q", err, tc.want)
			}
			e.assertStoreHolds(t)
		})
	}
	// Symlink escapes: writing through a symlink that points out of the
	// tree lands inside the tree.
	ref := reg.Push(t, "kiln/evil-symlink:1", oc.Image(t, v1.Config{},
		oc.Tar(t, oc.File(strings.TrimPrefix(outside, "/")+"/keep", "", 0o644), oc.Dir("tmp", 0o1777),
			oc.Symlink("out", outside), oc.Symlink("up", esc)),
		oc.Tar(t, oc.File("out/sentinel", "pwned", 0o644), oc.File("up/tmp/pwned", "pwned", 0o644), oc.Whiteout("out/.wh.sentinel"))))
	img, _, err := e.store.PullOCI(context.Background(), "symlinks", ref, image.BuildOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := disk.ReadExt4File(context.Background(), runner, img.RootFS, outside+"/sentinel"); err != nil || string(b) != "pwned" {
		t.Errorf("write through the symlink should land inside the tree: %q, %v", b, err)
	}
	if b, err := os.ReadFile(sentinel); err != nil || string(b) != "host" {
		t.Fatalf("host file outside the tree changed: %q, %v", b, err)
	}
	if _, err := os.Stat("/tmp/pwned"); err == nil {
		t.Fatal("/tmp/pwned was written on the host")
	}
	// A layer larger than the limits is refused from its manifest, before
	// any download.
	small := newEnv(t, image.WithCacheDir(filepath.Join(t.TempDir(), "oci")), image.WithLimits(image.Limits{MaxTotalSize: 1024}))
	ref = reg.Push(t, "kiln/big:1", oc.Image(t, v1.Config{}, oc.Tar(t, oc.File("f", randomHex(8<<10), 0o644))))
	_, _, err = small.store.PullOCI(context.Background(), "big", ref, image.BuildOptions{}, nil)
	if !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), "over the limit") {
		t.Fatalf("oversized layer: %v", err)
	}
	small.assertStoreHolds(t)
}

// TestPullOCIFailures: a missing tag, a bad reference, a name in use, a
// corrupted cache blob and a cancelled pull all leave no image behind.
func TestPullOCIFailures(t *testing.T) {
	cacheDir := filepath.Join(t.TempDir(), "oci")
	e := newEnv(t, image.WithCacheDir(cacheDir))
	reg := oc.Serve(t)
	ctx := context.Background()
	ref := reg.Push(t, "kiln/ok:1", oc.Image(t, v1.Config{}, oc.Tar(t, oc.File("hello", "world", 0o644))))

	_, _, err := e.store.PullOCI(ctx, "missing", reg.Host+"/kiln/ok:nope", image.BuildOptions{}, nil)
	if !errors.Is(err, api.ErrNotFound) {
		t.Errorf("missing tag: %v", err)
	}
	_, _, err = e.store.PullOCI(ctx, "bad", "UPPER/Case::x", image.BuildOptions{}, nil)
	if !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("bad reference: %v", err)
	}
	_, _, err = e.store.PullOCI(ctx, "Bad_Name", ref, image.BuildOptions{}, nil)
	if !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("bad name: %v", err)
	}
	e.assertStoreHolds(t)

	// Corrupt the cached layer (same size, other bytes): the pull that
	// reads it back notices.
	if _, _, err := e.store.PullOCI(ctx, "ok", ref, image.BuildOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.store.PullOCI(ctx, "ok", ref, image.BuildOptions{}, nil); !errors.Is(err, api.ErrAlreadyExists) {
		t.Errorf("second pull of one name: %v", err)
	}
	blobs, _ := filepath.Glob(filepath.Join(cacheDir, "blobs", "sha256", "*"))
	if len(blobs) != 1 {
		t.Fatalf("cache holds %v, want the one layer", blobs)
	}
	fi, _ := os.Stat(blobs[0])
	if err := os.WriteFile(blobs[0], make([]byte, fi.Size()), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = e.store.PullOCI(ctx, "corrupt", ref, image.BuildOptions{}, nil)
	if err == nil || !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("corrupted cache blob: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, _, err = e.store.PullOCI(cctx, "cancelled", ref, image.BuildOptions{}, nil)
	if !errors.Is(err, api.ErrCanceled) {
		t.Errorf("cancelled pull: %v", err)
	}
	e.assertStoreHolds(t, "ok")
}

// randomHex is n random bytes in hex: content that does not compress much.
func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func TestNameFromRefAndCatalog(t *testing.T) {
	for ref, want := range map[string]string{
		"debian:bookworm":                          "debian-bookworm",
		"docker.io/library/alpine":                 "alpine",
		"ghcr.io/o/my_tool:v1.2":                   "my-tool-v1-2",
		"127.0.0.1:5000/kiln/test:1":               "test-1",
		"debian@sha256:" + strings.Repeat("a", 64): "debian",
	} {
		if got, err := image.NameFromRef(ref); err != nil || got != want {
			t.Errorf("NameFromRef(%q) = %q, %v; want %q", ref, got, err, want)
		}
	}
	cat, err := image.Catalog()
	if err != nil || len(cat) == 0 {
		t.Fatalf("catalog: %v, %v", cat, err)
	}
	deb, err := image.LookupCatalog("debian")
	if err != nil || deb.Debootstrap == nil || deb.Debootstrap.Suite != "bookworm" {
		t.Fatalf("catalog debian: %+v, %v", deb, err)
	}
	for _, e := range cat {
		if e.OCI != "" {
			if _, err := image.ParseRef(e.OCI); err != nil {
				t.Errorf("catalog %s: %v", e.Name, err)
			}
		}
	}
	if _, err := image.LookupCatalog("nope"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("unknown catalog name: %v", err)
	}
}
