package image_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/image"
)

func TestChooseSource(t *testing.T) {
	deb := &image.Debootstrap{Suite: "bookworm"}
	unreachable := errors.New("dial tcp: lookup registry-1.docker.io: no such host")
	for _, tc := range []struct {
		name     string
		e        image.CatalogEntry
		probe    error
		wantOCI  bool
		whyMatch string
	}{
		{"oci only, reachable", image.CatalogEntry{OCI: "alpine:3"}, nil, true, "registry"},
		{"oci only, unreachable: still the registry", image.CatalogEntry{OCI: "alpine:3"}, unreachable, true, "registry"},
		{"debootstrap only", image.CatalogEntry{Debootstrap: deb}, nil, false, "debootstrap"},
		{"both, reachable: registry preferred", image.CatalogEntry{OCI: "debian:bookworm", Debootstrap: deb}, nil, true, "reachable"},
		{"both, unreachable: debootstrap", image.CatalogEntry{OCI: "debian:bookworm", Debootstrap: deb}, unreachable, false, "no such host"},
	} {
		got := image.ChooseSource(tc.e, tc.probe)
		if (got.OCI != "") != tc.wantOCI || (got.OCI == "") == (got.Debootstrap == nil) || !strings.Contains(got.Why, tc.whyMatch) {
			t.Errorf("%s: %+v", tc.name, got)
		}
	}
	// The default image has both sources, so it works with no registry.
	e, err := image.LookupCatalog("debian")
	if err != nil || e.OCI == "" || e.Debootstrap == nil {
		t.Errorf("catalog debian: %+v, %v", e, err)
	}
}

func TestLoadCatalogExtra(t *testing.T) {
	dir := t.TempDir()
	extra := filepath.Join(dir, "catalog.json")
	// A missing file adds nothing.
	base, err := image.LoadCatalog(extra)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(extra, []byte(`[
		{"name": "mine", "description": "d", "oci": "127.0.0.1:5000/x/y:1", "kernel": "test"},
		{"name": "debian", "description": "replaced", "oci": "127.0.0.1:5000/debian:12"}]`), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := image.LoadCatalog(extra)
	if err != nil || len(c) != len(base)+1 {
		t.Fatalf("catalog with extra: %d entries (base %d), %v", len(c), len(base), err)
	}
	if e, err := image.LookupCatalogIn(extra, "mine"); err != nil || e.Kernel != "test" {
		t.Errorf("extra entry: %+v, %v", e, err)
	}
	if e, err := image.LookupCatalogIn(extra, "debian"); err != nil || e.Description != "replaced" || e.Debootstrap != nil {
		t.Errorf("replaced entry: %+v, %v", e, err)
	}
	for name, body := range map[string]string{
		"not json":   `{`,
		"bad name":   `[{"name": "Bad Name", "oci": "x:1"}]`,
		"no source":  `[{"name": "x"}]`,
		"bad ref":    `[{"name": "x", "oci": "UPPER/Case::"}]`,
		"bad kernel": `[{"name": "x", "oci": "x:1", "kernel": "../k"}]`,
	} {
		if err := os.WriteFile(extra, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := image.LookupCatalogIn(extra, "x"); !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), extra) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
