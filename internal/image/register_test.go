package image_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/disk"
)

// TestRegisterPromote: a registered image points at the host file without
// copying it, is never deleted by Remove, and after Promote is a managed
// copy that no longer depends on the host file. Bad input changes nothing.
func TestRegisterPromote(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	host := filepath.Join(t.TempDir(), "root.ext4")
	if err := disk.MakeExt4(ctx, runner, host, disk.MinExt4Size, disk.Ext4Options{Label: "reg"}); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(host)
	if err != nil {
		t.Fatal(err)
	}
	notExt4 := filepath.Join(t.TempDir(), "zeros.img")
	if err := os.WriteFile(notExt4, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, rootfs, kernel string
		want                 error
	}{
		{"Bad Name", host, "", api.ErrBadRequest},
		{"rel", "root.ext4", "", api.ErrBadRequest},
		{"missing", filepath.Join(t.TempDir(), "nope.ext4"), "", api.ErrNotFound},
		{"dir", t.TempDir(), "", api.ErrBadRequest},
		{"zeros", notExt4, "", api.ErrBadRequest},
		{"inside", filepath.Join(e.dir, "x", "rootfs.ext4"), "", api.ErrBadRequest},
		{"kern", host, "../k", api.ErrBadRequest},
	} {
		if _, err := e.store.Register(ctx, tc.name, tc.rootfs, tc.kernel); !errors.Is(err, tc.want) {
			t.Errorf("register %s %s: %v, want %v", tc.name, tc.rootfs, err, tc.want)
		}
	}
	e.assertStoreHolds(t)

	img, err := e.store.Register(ctx, "reg", host, "test")
	if err != nil {
		t.Fatal(err)
	}
	if img.Unmanaged != host || img.KernelName != "test" || img.SizeBytes != disk.MinExt4Size {
		t.Errorf("registered %+v", img)
	}
	if target, err := os.Readlink(img.RootFS); err != nil || target != host {
		t.Errorf("rootfs link %q, %v", target, err)
	}
	if _, err := e.store.Register(ctx, "reg", host, ""); !errors.Is(err, api.ErrAlreadyExists) {
		t.Errorf("register twice: %v", err)
	}
	// Remove deletes the record, never the host file.
	if err := e.store.Remove(ctx, "reg"); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(host); err != nil || !bytes.Equal(got, orig) {
		t.Fatalf("remove touched the host file: %v", err)
	}
	e.assertStoreHolds(t)

	// Promote copies it in; the host file is then unrelated.
	if _, err := e.store.Register(ctx, "reg", host, ""); err != nil {
		t.Fatal(err)
	}
	img, err = e.store.Promote(ctx, "reg")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(img.RootFS)
	if err != nil || !fi.Mode().IsRegular() || img.Unmanaged != "" || img.Source != "promoted:"+host {
		t.Fatalf("promoted %+v (%v, %v)", img, fi, err)
	}
	if got, err := os.ReadFile(img.RootFS); err != nil || !bytes.Equal(got, orig) {
		t.Errorf("promoted copy differs: %v", err)
	}
	if err := os.Remove(host); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Get(ctx, "reg"); err != nil {
		t.Errorf("promoted image needs the host file: %v", err)
	}
	if _, err := e.store.Promote(ctx, "reg"); !errors.Is(err, api.ErrFailedPrecondition) {
		t.Errorf("promote a managed image: %v", err)
	}
	if _, err := e.store.Promote(ctx, "nope"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("promote a missing image: %v", err)
	}
	e.assertStoreHolds(t, "reg")
}
