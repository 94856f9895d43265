package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kilnvm/kiln/internal/api"
	oc "github.com/kilnvm/kiln/internal/image/ocitest"
	"github.com/kilnvm/kiln/internal/testutil"
)

// TestImageAutoPullOnCreate: `vm create --image N` with N absent but in
// the catalog (here an extra catalog file pointing at an in-process
// registry) makes the image in a "pull image" stage of the create, then
// boots it; a catalog image that cannot be pulled fails the create with a
// clear error and leaves neither VM nor image.
func TestImageAutoPullOnCreate(t *testing.T) {
	h := setup(t)
	base, err := os.ReadFile(testutil.BusyboxRootfsTar(t))
	if err != nil {
		t.Fatal(err)
	}
	reg := oc.Serve(t)
	ref := reg.Push(t, "kiln/auto:1", oc.Image(t, v1.Config{Env: []string{"AUTO=1"}}, base))
	catalog := filepath.Join(h.root, "catalog.json")
	body := fmt.Sprintf(`[
		{"name": "autobb", "description": "e2e auto-pull", "oci": %q, "kernel": "test"},
		{"name": "autobad", "description": "e2e: no such tag", "oci": %q, "kernel": "test"}]`,
		ref, reg.Host+"/kiln/auto:missing")
	if err := os.WriteFile(catalog, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(catalog)
		_ = h.client().DeleteImage(context.Background(), "autobb")
	})

	if r := h.mustKiln(t, "image", "list", "--available"); !strings.Contains(r.stdout, "autobb") {
		t.Errorf("catalog lacks the extra entry: %s", r)
	}
	r := h.mustKiln(t, "vm", "create", "--name", "auto1", "--image", "autobb")
	t.Cleanup(func() { _ = h.client().DeleteVM(context.Background(), "auto1") })
	if !strings.Contains(r.stderr, "pull image") {
		t.Errorf("create progress lacks the pull stage: %s", r)
	}
	img, err := h.client().GetImage(context.Background(), "autobb")
	if err != nil || img.Kernel != "test" || !strings.HasPrefix(img.Digest, "sha256:") {
		t.Fatalf("auto-pulled image %+v, %v", img, err)
	}
	if r := h.mustKiln(t, "vm", "exec", "auto1", "--", "sh", "-c", `echo "AUTO=$AUTO"`); r.stdout != "AUTO=1\n" {
		t.Errorf("exec in the auto-pulled VM: %s", r)
	}

	// Failure: the pull fails, the create fails with its class, and
	// nothing is left behind.
	r = h.kiln(t, "vm", "create", "--name", "autobad", "--image", "autobad")
	if r.code == 0 || !strings.Contains(r.stderr, "not_found") && !strings.Contains(r.stderr, "not found") {
		t.Errorf("create from an unpullable catalog image: %s", r)
	}
	if _, err := h.client().GetVM(context.Background(), "autobad"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("failed create left a VM: %v", err)
	}
	if _, err := h.client().GetImage(context.Background(), "autobad"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("failed pull left an image: %v", err)
	}
	// A name in neither the store nor the catalog fails at once.
	if r := h.kiln(t, "vm", "create", "--name", "autonone", "--image", "nosuchimage"); r.code != 10 {
		t.Errorf("create from an unknown image: %s", r)
	}
}
