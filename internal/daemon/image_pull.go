package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/daemon/opstate"
	"github.com/kilnvm/kiln/internal/image"
	"github.com/kilnvm/kiln/internal/lockorder"
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
	var entry *image.CatalogEntry
	if e, err := image.LookupCatalogIn(d.cfg.ImageCatalog, req.Ref); err == nil {
		entry = &e
		if name == "" {
			name = e.Name
		}
		if opts.KernelName == "" {
			opts.KernelName = e.Kernel
		}
	} else if !errors.Is(err, api.ErrNotFound) {
		return err
	}
	if entry == nil {
		if _, err := image.ParseRef(ref); err != nil {
			return err
		}
		if name == "" {
			if name, err = image.NameFromRef(ref); err != nil {
				return err
			}
		}
		entry = &image.CatalogEntry{Name: name, OCI: ref}
	}
	if err := api.ValidateName("image", name); err != nil {
		return err
	}
	kind := "image.pull"
	if entry.OCI == "" {
		kind = "image.build"
	}
	return acceptedOp(w, d.ops.Begin(r.Context(), kind, name, func(ctx context.Context, op *opstate.Op) (any, error) {
		img, err := d.makeCatalogImage(ctx, op, *entry, name, opts, true)
		if err != nil {
			return nil, err
		}
		return imageToAPI(img), nil
	}))
}

// makeCatalogImage makes the image name from the catalog entry e (or a
// plain OCI reference dressed as one): it chooses the source (probing the
// registry when e also has a debootstrap fallback), then pulls (coalescing
// with other pulls of the name) or builds with debootstrap under
// imageOpsMu. With stages, pull progress stages become op stages (an
// image.pull op); without, they are details of the caller's stage (a VM
// create).
func (d *Daemon) makeCatalogImage(ctx context.Context, op *opstate.Op, e image.CatalogEntry, name string, opts image.BuildOptions, stages bool) (image.Image, error) {
	var probeErr error
	if e.OCI != "" && e.Debootstrap != nil {
		probeErr = d.images.ProbeRegistry(ctx, e.OCI)
		if ctx.Err() != nil {
			return image.Image{}, fmt.Errorf("make image %q: %w: %w", name, api.ErrCanceled, ctx.Err())
		}
	}
	src := image.ChooseSource(e, probeErr)
	d.logger.Info("image: source chosen", "image", name, "oci", src.OCI, "why", src.Why, "op_id", op.ID())
	if src.Debootstrap != nil {
		if stages {
			op.Stage("debootstrap", src.Debootstrap.Suite)
		} else {
			op.Detail("debootstrap " + src.Debootstrap.Suite + ": " + src.Why)
		}
		d.imageOpsMu.Lock()
		defer d.imageOpsMu.Unlock()
		return d.images.BuildDebootstrap(ctx, name, *src.Debootstrap, opts)
	}
	// progress may come from two goroutines when a pull is joined; mu is
	// held across op.Stage and op.Detail, so it is ordered before Op.mu.
	mu := lockorder.Mutex{Name: lockPullProgress, Order: d.lockOrder}
	stage := ""
	img, shared, err := d.images.PullOCI(ctx, name, src.OCI, opts, func(p image.PullProgress) {
		mu.Lock()
		defer mu.Unlock()
		if stages && p.Stage != stage {
			stage = p.Stage
			op.Stage(p.Stage, p.String())
			return
		}
		op.Detail(p.String())
	})
	if err != nil {
		return image.Image{}, err
	}
	if shared {
		d.logger.Info("image pull joined another pull of the same image", "image", name)
	}
	return img, nil
}

func (d *Daemon) handleImageCatalog(w http.ResponseWriter, r *http.Request) error {
	cat, err := image.LoadCatalog(d.cfg.ImageCatalog)
	if err != nil {
		return err
	}
	out := make([]api.CatalogImage, 0, len(cat))
	for _, e := range cat {
		var srcs []string
		if e.OCI != "" {
			srcs = append(srcs, "oci:"+e.OCI)
		}
		if e.Debootstrap != nil {
			srcs = append(srcs, "debootstrap:"+strings.TrimSpace(e.Debootstrap.Suite))
		}
		c := api.CatalogImage{Name: e.Name, Description: e.Description, Kernel: e.Kernel, Source: strings.Join(srcs, " | ")}
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
