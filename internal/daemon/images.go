package daemon

import (
	"context"
	"net/http"
	"path/filepath"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/daemon/opstate"
	"github.com/kilnvm/kiln/internal/image"
	"github.com/kilnvm/kiln/internal/store"
)

func imageToAPI(i image.Image) api.Image {
	out := api.Image{Name: i.Name, Source: i.Source, Size: i.SizeBytes, HasSystemd: i.HasSystemd, Kernel: i.KernelName, CreatedAt: i.Created, Digest: i.Digest, Unmanaged: i.Unmanaged}
	if c := i.Config; c != nil {
		out.Config = &api.ImageConfig{Env: c.Env, WorkingDir: c.WorkingDir, User: c.User, Entrypoint: c.Entrypoint, Cmd: c.Cmd}
	}
	return out
}

func (d *Daemon) handleListImages(w http.ResponseWriter, r *http.Request) error {
	is, err := d.images.List(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, convert(is, imageToAPI))
}

func (d *Daemon) handleGetImage(w http.ResponseWriter, r *http.Request) error {
	i, err := d.images.Get(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, imageToAPI(i))
}

func (d *Daemon) handleDeleteImage(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	d.imageOpsMu.Lock()
	defer d.imageOpsMu.Unlock()
	if err := d.refuseInUse(r.Context(), "image", name, func(v store.VM) string { return v.Image }); err != nil {
		return err
	}
	if err := d.images.Remove(r.Context(), name); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func buildOptions(kernel, size string) (image.BuildOptions, error) {
	opts := image.BuildOptions{KernelName: kernel}
	if kernel != "" {
		if err := api.ValidateName("kernel", kernel); err != nil {
			return opts, err
		}
	}
	if size != "" {
		n, err := api.ParseSize(size)
		if err != nil {
			return opts, err
		}
		opts.Size = n
	}
	return opts, nil
}

func (d *Daemon) handleImportImageDir(w http.ResponseWriter, r *http.Request) error {
	var req api.ImportImageRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if err := api.ValidateName("image", req.Name); err != nil {
		return err
	}
	if req.Dir == "" || !filepath.IsAbs(req.Dir) {
		return api.Errorf(api.ErrBadRequest, "image directory %q must be an absolute path", req.Dir)
	}
	opts, err := buildOptions(req.Kernel, req.Size)
	if err != nil {
		return err
	}
	return acceptedOp(w, d.ops.Begin(r.Context(), "image.import", req.Name, func(ctx context.Context, op *opstate.Op) (any, error) {
		op.Stage("build ext4", req.Dir)
		d.imageOpsMu.Lock()
		defer d.imageOpsMu.Unlock()
		img, err := d.images.ImportDir(ctx, req.Name, req.Dir, opts)
		if err != nil {
			return nil, err
		}
		return imageToAPI(img), nil
	}))
}

// handleImportImageTar builds an image from the tarball in the request
// body. It is synchronous: the body can only be read while the request lasts.
func (d *Daemon) handleImportImageTar(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	name := q.Get("name")
	if err := api.ValidateName("image", name); err != nil {
		return err
	}
	opts, err := buildOptions(q.Get("kernel"), q.Get("size"))
	if err != nil {
		return err
	}
	d.imageOpsMu.Lock()
	defer d.imageOpsMu.Unlock()
	img, err := d.images.ImportTar(r.Context(), name, r.Body, opts)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, imageToAPI(img))
}

func (d *Daemon) handleBuildImage(w http.ResponseWriter, r *http.Request) error {
	var req api.BuildImageRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if err := api.ValidateName("image", req.Name); err != nil {
		return err
	}
	if req.Suite == "" {
		return api.Errorf(api.ErrBadRequest, "name a debootstrap suite, e.g. bookworm")
	}
	opts, err := buildOptions(req.Kernel, req.Size)
	if err != nil {
		return err
	}
	return acceptedOp(w, d.ops.Begin(r.Context(), "image.build", req.Name, func(ctx context.Context, op *opstate.Op) (any, error) {
		op.Stage("debootstrap", req.Suite)
		d.imageOpsMu.Lock()
		defer d.imageOpsMu.Unlock()
		img, err := d.images.BuildDebootstrap(ctx, req.Name, image.Debootstrap{Suite: req.Suite, Mirror: req.Mirror, Include: req.Include}, opts)
		if err != nil {
			return nil, err
		}
		return imageToAPI(img), nil
	}))
}
