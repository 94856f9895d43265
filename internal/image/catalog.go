package image

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kilnvm/kiln/internal/api"
)

// CatalogEntry is a well-known image kiln can make by name: from an OCI
// reference, a debootstrap recipe, or both (the registry is preferred
// where it answers; see ChooseSource).
type CatalogEntry struct {
	Name        string       `json:"name"`
	Description string       `json:"description"`
	OCI         string       `json:"oci,omitempty"`
	Debootstrap *Debootstrap `json:"debootstrap,omitempty"`
	// Kernel is the kernel VMs of the image boot; empty means the
	// daemon's default.
	Kernel string `json:"kernel,omitempty"`
}

//go:embed catalog.json
var catalogJSON string

// Catalog returns the catalog embedded in the binary, sorted by name.
func Catalog() ([]CatalogEntry, error) { return LoadCatalog("") }

// LoadCatalog returns the embedded catalog with the entries of the JSON
// file extra (a list of CatalogEntry, as catalog.json) added, an entry of
// extra replacing the embedded one of its name. extra "" or a file that
// does not exist adds nothing. The file is read at each call, so an edit
// takes effect without a daemon restart.
func LoadCatalog(extra string) ([]CatalogEntry, error) {
	c, err := parseCatalog("embedded image catalog", []byte(catalogJSON))
	if err != nil {
		return nil, err
	}
	if extra != "" {
		data, err := os.ReadFile(extra)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("image catalog %s: %w", extra, err)
		default:
			more, err := parseCatalog("image catalog "+extra, data)
			if err != nil {
				return nil, err
			}
			byName := map[string]int{}
			for i, e := range c {
				byName[e.Name] = i
			}
			for _, e := range more {
				if i, ok := byName[e.Name]; ok {
					c[i] = e
				} else {
					c = append(c, e)
				}
			}
		}
	}
	sort.Slice(c, func(i, j int) bool { return c[i].Name < c[j].Name })
	return c, nil
}

func parseCatalog(what string, data []byte) ([]CatalogEntry, error) {
	var c []CatalogEntry
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("%s: %v: %w", what, err, api.ErrBadRequest)
	}
	for _, e := range c {
		if err := api.ValidateName("image", e.Name); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		if e.OCI == "" && e.Debootstrap == nil {
			return nil, fmt.Errorf("%s: %q needs an OCI reference or a debootstrap recipe: %w", what, e.Name, api.ErrBadRequest)
		}
		if e.OCI != "" {
			if _, err := ParseRef(e.OCI); err != nil {
				return nil, fmt.Errorf("%s: %q: %w", what, e.Name, err)
			}
		}
		if e.Kernel != "" {
			if err := api.ValidateName("kernel", e.Kernel); err != nil {
				return nil, fmt.Errorf("%s: %q: %w", what, e.Name, err)
			}
		}
	}
	return c, nil
}

// LookupCatalog returns the embedded catalog's entry name, or
// api.ErrNotFound.
func LookupCatalog(name string) (CatalogEntry, error) { return LookupCatalogIn("", name) }

// LookupCatalogIn returns the entry name of LoadCatalog(extra), or
// api.ErrNotFound.
func LookupCatalogIn(extra, name string) (CatalogEntry, error) {
	c, err := LoadCatalog(extra)
	if err != nil {
		return CatalogEntry{}, err
	}
	for _, e := range c {
		if e.Name == name {
			return e, nil
		}
	}
	return CatalogEntry{}, fmt.Errorf("catalog image %q: %w", name, api.ErrNotFound)
}

// Source is how a catalog image is made: exactly one of OCI and
// Debootstrap is set.
type Source struct {
	OCI         string
	Debootstrap *Debootstrap
	// Why says why this source was chosen, for progress and logs.
	Why string
}

// ChooseSource decides how to make the catalog image e. An entry with one
// source uses it. An entry with both uses the registry when probeErr (the
// result of probing its OCI reference, see Store.ProbeRegistry) is nil,
// else falls back to debootstrap, so the image can be made on a machine
// with no registry access.
func ChooseSource(e CatalogEntry, probeErr error) Source {
	switch {
	case e.OCI == "":
		return Source{Debootstrap: e.Debootstrap, Why: "debootstrap recipe"}
	case e.Debootstrap == nil:
		return Source{OCI: e.OCI, Why: "registry"}
	case probeErr == nil:
		return Source{OCI: e.OCI, Why: "registry reachable"}
	default:
		return Source{Debootstrap: e.Debootstrap, Why: fmt.Sprintf("registry unreachable (%v): debootstrap", probeErr)}
	}
}

// ProbeTimeout bounds Store.ProbeRegistry.
const ProbeTimeout = 5 * time.Second

// ProbeRegistry asks the registry of ref for the reference's manifest
// (one HEAD request, no download), within ProbeTimeout.
func (s *Store) ProbeRegistry(ctx context.Context, ref string) error {
	r, err := ParseRef(ref)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	_, err = remote.Head(r,
		remote.WithContext(ctx),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}),
		remote.WithAuthFromKeychain(s.keychain),
		remote.WithTransport(loopbackOnlyHTTP{next: s.transport}),
		remote.WithUserAgent("kiln"))
	if err != nil {
		return registryError("probe "+r.String(), err)
	}
	return nil
}
