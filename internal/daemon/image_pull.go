package daemon

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/daemon/opstate"
	"github.com/kilnvm/kiln/internal/image"
)

// handlePullImage pulls an OCI image, or makes a catalog image by name.
// Pulls do not take imageOpsMu across the download: concurrent pulls of one
// name coalesce inside image.Store (one does the work, the others wait
// for it), and the store commits the image under its own lock with a
// no-replace rename, so a pull and a build of one name cannot both win.
func (d *Daemon) handlePullImage(w http.ResponseWriter, r *http.Request) error {
	var req api.PullImageRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if req.Ref == "" {
		return api.Errorf(api.ErrBadRequest, "name an image reference (e.g. debian:bookworm) or a catalog image")
	}
	opts, err := buildOptions(req.Kernel, req.Size)
	if err != nil {
		return err
	}
	ref, name := req.Ref, req.Name
	var recipe *image.Debootstrap
	if entry, err := image.LookupCatalog(req.Ref); err == nil {
		if name == "" {
			name = entry.Name
		}
		if opts.KernelName == "" {
			opts.KernelName = entry.Kernel
		}
		ref, recipe = entry.OCI, entry.Debootstrap
	} else if !errors.Is(err, api.ErrNotFound) {
		return err
	}
	if recipe == nil {
		if _, err := image.ParseRef(ref); err != nil {
			return err
		}
		if name == "" {
			if name, err = image.NameFromRef(ref); err != nil {
				return err
			}
		}
	}
	if err := api.ValidateName("image", name); err != nil {
		return err
	}
	if recipe != nil {
		return acceptedOp(w, d.ops.Begin(r.Context(), "image.build", name, func(ctx context.Context, op *opstate.Op) (any, error) {
			op.Stage("debootstrap", recipe.Suite)
			d.imageOpsMu.Lock()
			defer d.imageOpsMu.Unlock()
			img, err := d.images.BuildDebootstrap(ctx, name, *recipe, opts)
			if err != nil {
				return nil, err
			}
			return imageToAPI(img), nil
		}))
	}
	return acceptedOp(w, d.ops.Begin(r.Context(), "image.pull", name, func(ctx context.Context, op *opstate.Op) (any, error) {
		var mu sync.Mutex // progress may come from two goroutines when a pull is joined
		stage := ""
		img, shared, err := d.images.PullOCI(ctx, name, ref, opts, func(p image.PullProgress) {
			mu.Lock()
			defer mu.Unlock()
			if p.Stage != stage {
				stage = p.Stage
				op.Stage(p.Stage, p.String())
				return
			}
			op.Detail(p.String())
		})
		if err != nil {
			return nil, err
		}
		if shared {
			d.logger.Info("image pull joined another pull of the same image", "image", name)
		}
		return imageToAPI(img), nil
	}))
}

func (d *Daemon) handleImageCatalog(w http.ResponseWriter, r *http.Request) error {
	cat, err := image.Catalog()
	if err != nil {
		return err
	}
	out := make([]api.CatalogImage, 0, len(cat))
	for _, e := range cat {
		c := api.CatalogImage{Name: e.Name, Description: e.Description, Kernel: e.Kernel, Source: "oci:" + e.OCI}
		if e.Debootstrap != nil {
			c.Source = "debootstrap:" + strings.TrimSpace(e.Debootstrap.Suite)
		}
		if _, err := d.images.Get(r.Context(), e.Name); err == nil {
			c.Present = true
		}
		out = append(out, c)
	}
	return writeJSON(w, http.StatusOK, out)
}

func (d *Daemon) handlePruneImageCache(w http.ResponseWriter, r *http.Request) error {
	var req api.PruneCacheRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	res, err := d.images.PruneCache(r.Context(), req.DryRun)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, api.PruneCacheResult{Blobs: res.Blobs, Bytes: res.Bytes, DryRun: res.DryRun})
}
