package image

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/kilnvm/kiln/internal/api"
)

// CatalogEntry is a well-known image kiln can make by name: from an OCI
// reference or a debootstrap recipe.
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
var catalogJSON []byte

// Catalog returns the catalog embedded in the binary, sorted by name.
func Catalog() ([]CatalogEntry, error) {
	var c []CatalogEntry
	if err := json.Unmarshal(catalogJSON, &c); err != nil {
		return nil, fmt.Errorf("embedded image catalog: %w", err)
	}
	for _, e := range c {
		if err := api.ValidateName("image", e.Name); err != nil {
			return nil, fmt.Errorf("embedded image catalog: %w", err)
		}
		if (e.OCI == "") == (e.Debootstrap == nil) {
			return nil, fmt.Errorf("embedded image catalog: %q needs exactly one source", e.Name)
		}
	}
	sort.Slice(c, func(i, j int) bool { return c[i].Name < c[j].Name })
	return c, nil
}

// LookupCatalog returns the catalog entry name, or api.ErrNotFound.
func LookupCatalog(name string) (CatalogEntry, error) {
	c, err := Catalog()
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
