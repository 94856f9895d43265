package e2e

import (
	"context"
	"os"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	oc "github.com/kilnvm/kiln/internal/image/ocitest"
	"github.com/kilnvm/kiln/internal/testutil"
)

// TestImagePullBootsAndKeepsOwnership pushes an OCI image (busybox gzipped,
// then two zstd layers: files, then whiteouts, an opaque directory, set-id
// files, owners, a hard link and symlinks) to an in-process registry on
// loopback, pulls it through `kiln image pull`, boots it and checks inside
// the guest that files, owners and modes are what the layers say.
func TestImagePullBootsAndKeepsOwnership(t *testing.T) {
	h := setup(t)
	base, err := os.ReadFile(testutil.BusyboxRootfsTar(t))
	if err != nil {
		t.Fatal(err)
	}
	lower := oc.Tar(t,
		oc.Dir("etc", 0o755),
		oc.File("etc/shadow", "root:*:19000::::::\n", 0o640).Owned(0, 42),
		oc.Dir("srv", 0o755), oc.Dir("srv/gone", 0o755), oc.File("srv/gone/f", "f", 0o644),
		oc.Dir("srv/opq", 0o755), oc.File("srv/opq/old", "old", 0o644),
		oc.File("srv/x", "x", 0o644), oc.File("srv/tool", "v1", 0o755),
	)
	upper := oc.Tar(t,
		oc.Whiteout("srv/.wh.gone"), oc.Whiteout("srv/.wh.x"),
		oc.Whiteout("srv/opq/.wh..wh..opq"), oc.File("srv/opq/new", "new", 0o644),
		oc.File("srv/tool", "v2", 0o755),
		oc.File("srv/sudo", "#!/bin/sh\n", 0o4755),
		oc.Hardlink("srv/sudo-link", "srv/sudo"),
		oc.Dir("home", 0o755), oc.Dir("home/dev", 0o700).Owned(1000, 1000),
		oc.File("home/dev/.profile", "export A=1\n", 0o600).Owned(1000, 1000),
		oc.Symlink("srv/link", "tool"),
	)
	reg := oc.Serve(t)
	ref := reg.Push(t, "kiln/e2e:1", oc.ImageOf(t, v1.Config{Env: []string{"FOO=bar"}, WorkingDir: "/srv", Cmd: []string{"sh"}},
		oc.Gzip(base), oc.Zstd(lower), oc.Zstd(upper)))

	r := h.mustKiln(t, "image", "pull", ref, "--name", "ocibb", "--kernel", "test")
	t.Cleanup(func() { _ = h.client().DeleteImage(context.Background(), "ocibb") })
	if !strings.Contains(r.stderr, "download") || !strings.Contains(r.stderr, "extract") {
		t.Errorf("pull progress lacks its stages: %s", r)
	}
	img, err := h.client().GetImage(context.Background(), "ocibb")
	if err != nil || img.Config == nil || img.Config.WorkingDir != "/srv" || !strings.HasPrefix(img.Digest, "sha256:") {
		t.Fatalf("pulled image %+v, %v", img, err)
	}
	h.createVM(t, "pulled", "--image", "ocibb")
	// The image config's Env reaches every command and its WorkingDir is
	// the default directory; -w still overrides it.
	if r := h.mustKiln(t, "vm", "exec", "pulled", "--", "sh", "-c", `echo "$(pwd) FOO=$FOO"`); r.stdout != "/srv FOO=bar\n" {
		t.Errorf("image config not honoured: %s", r)
	}
	if r := h.mustKiln(t, "vm", "exec", "-w", "/etc", "pulled", "--", "pwd"); r.stdout != "/etc\n" {
		t.Errorf("-w over the image's WorkingDir: %s", r)
	}
	r = h.mustKiln(t, "vm", "exec", "pulled", "--", "sh", "-c",
		"cd /srv && stat -c '%n %a %u:%g %h' /etc/shadow sudo sudo-link /home/dev /home/dev/.profile; "+
			"cat tool opq/new; readlink link; ls -A /srv /srv/opq | tr '\\n' ' '")
	want := []string{
		"/etc/shadow 640 0:42 1", "sudo 4755 0:0 2", "sudo-link 4755 0:0 2",
		"/home/dev 700 1000:1000", "/home/dev/.profile 600 1000:1000 1",
		"v2newtool\n", "/srv: link opq sudo sudo-link tool  /srv/opq: new ",
	}
	for _, w := range want {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("guest output lacks %q:\n%s", w, r.stdout)
		}
	}
	for _, gone := range []string{"gone", " x ", "old", ".wh."} {
		if strings.Contains(r.stdout[strings.LastIndex(r.stdout, "/srv:"):], gone) {
			t.Errorf("%q is still in the guest's /srv:\n%s", gone, r.stdout)
		}
	}

	// A second pull of the same image to another name downloads only the
	// config (layers come from the cache); pruning then frees the layers.
	before := reg.BlobGets()
	h.mustKiln(t, "image", "pull", ref, "--name", "ocibb2")
	t.Cleanup(func() { _ = h.client().DeleteImage(context.Background(), "ocibb2") })
	if got := reg.BlobGets() - before; got != 1 {
		t.Errorf("second pull fetched %d blobs, want 1", got)
	}
	if r := h.mustKiln(t, "image", "cache", "prune", "--dry-run"); !strings.Contains(r.stdout, "would free") || !strings.Contains(r.stdout, "(3 blobs)") {
		t.Errorf("dry-run prune: %s", r)
	}
	if r := h.mustKiln(t, "image", "cache", "prune"); !strings.Contains(r.stdout, "freed") || !strings.Contains(r.stdout, "(3 blobs)") {
		t.Errorf("prune: %s", r)
	}

	// Failures: a missing tag and a name in use are clear and leave nothing.
	if r := h.kiln(t, "image", "pull", reg.Host+"/kiln/e2e:nope", "--name", "nope"); r.code == 0 || !strings.Contains(r.stderr, "not_found") && !strings.Contains(r.stderr, "not found") {
		t.Errorf("missing tag: %s", r)
	}
	if _, err := h.client().GetImage(context.Background(), "nope"); err == nil {
		t.Error("a failed pull left an image")
	}
	if r := h.kiln(t, "image", "pull", ref, "--name", "ocibb"); r.code == 0 || !strings.Contains(r.stderr, "exists") {
		t.Errorf("pull into an existing name: %s", r)
	}
	if r := h.mustKiln(t, "image", "list", "--available"); !strings.Contains(r.stdout, "debian") || !strings.Contains(r.stdout, "debootstrap:bookworm") {
		t.Errorf("catalog: %s", r)
	}
}
