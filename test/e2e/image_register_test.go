package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
)

// TestImageRegisterPromote registers a copy of the bb image's ext4 file
// as an unmanaged image, boots a VM from it, checks that kiln refuses bad
// files and never deletes the host file, then promotes it into managed
// storage so that it no longer needs the host file.
func TestImageRegisterPromote(t *testing.T) {
	h := setup(t)
	ctx := context.Background()
	host := filepath.Join(t.TempDir(), "my-root.ext4")
	if out, err := exec.Command("cp", "--sparse=always", filepath.Join(h.root, "state", "images", "bb", "rootfs.ext4"), host).CombinedOutput(); err != nil {
		t.Fatalf("copy bb rootfs: %v: %s", err, out)
	}
	junk := filepath.Join(t.TempDir(), "junk.img")
	if err := os.WriteFile(junk, make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.client().DeleteImage(ctx, "regbb") })

	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"--name", "regbb", "--rootfs", junk}, 12},                  // not ext4
		{[]string{"--name", "regbb", "--rootfs", host + ".missing"}, 10},     // no such file
		{[]string{"--name", "Bad_Name", "--rootfs", host}, 12},               // bad name
		{[]string{"--name", "bb", "--rootfs", host, "--kernel", "test"}, 11}, // name taken
	} {
		if r := h.kiln(t, append([]string{"image", "register"}, tc.args...)...); r.code != tc.code {
			t.Errorf("register %v: want exit %d: %s", tc.args, tc.code, r)
		}
	}
	if _, err := h.client().GetImage(ctx, "regbb"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("a refused register left an image: %v", err)
	}

	r := h.mustKiln(t, "image", "register", "--name", "regbb", "--rootfs", host, "--kernel", "test")
	if !strings.Contains(r.stdout, "unmanaged") {
		t.Errorf("register output: %s", r)
	}
	h.createVM(t, "regvm", "--image", "regbb")
	if r := h.mustKiln(t, "vm", "exec", "regvm", "--", "sh", "-c", "echo hi > /root/f && cat /root/f"); r.stdout != "hi\n" {
		t.Errorf("exec in a VM of a registered image: %s", r)
	}
	if r := h.kiln(t, "image", "rm", "regbb"); r.code != 13 {
		t.Errorf("rm of an image in use: %s", r)
	}
	if err := h.client().DeleteVM(ctx, "regvm"); err != nil {
		t.Fatal(err)
	}

	h.mustKiln(t, "image", "promote", "regbb")
	img, err := h.client().GetImage(ctx, "regbb")
	if err != nil || img.Unmanaged != "" || img.Source != "promoted:"+host {
		t.Fatalf("promoted image %+v, %v", img, err)
	}
	if r := h.kiln(t, "image", "promote", "regbb"); r.code != 15 {
		t.Errorf("promote twice: %s", r)
	}
	if err := os.Remove(host); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client().GetImage(ctx, "regbb"); err != nil {
		t.Errorf("promoted image needs the host file: %v", err)
	}
	h.mustKiln(t, "image", "rm", "regbb")
}
