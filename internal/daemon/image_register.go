package daemon

import (
	"fmt"
	"net/http"

	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/api"
)

// handleRegisterImage records an unmanaged host rootfs as an image
// (image.Store.Register), under imageOpsMu like every registry mutation.
func (d *Daemon) handleRegisterImage(w http.ResponseWriter, r *http.Request) error {
	var req api.RegisterImageRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if req.RootFS == "" {
		return api.Errorf(api.ErrBadRequest, "name the root filesystem to register (an ext4 file)")
	}
	if err := d.checkCloneable(req.RootFS); err != nil {
		return err
	}
	d.imageOpsMu.Lock()
	defer d.imageOpsMu.Unlock()
	img, err := d.images.Register(r.Context(), req.Name, req.RootFS, req.Kernel)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, imageToAPI(img))
}

// handlePromoteImage copies a registered image's rootfs into managed
// storage (image.Store.Promote). VMs already made from it keep their own
// clones; the copy is synchronous (a sparse copy of one file).
func (d *Daemon) handlePromoteImage(w http.ResponseWriter, r *http.Request) error {
	d.imageOpsMu.Lock()
	defer d.imageOpsMu.Unlock()
	img, err := d.images.Promote(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, imageToAPI(img))
}

// checkCloneable refuses, under the reflink disk backend, a host file on
// another filesystem than the image store: reflink cannot clone across
// filesystems, so every VM create from it would fail.
func (d *Daemon) checkCloneable(p string) error {
	if d.disks.Name() != "reflink" {
		return nil
	}
	var a, b unix.Stat_t
	if unix.Stat(p, &a) != nil || unix.Stat(d.images.Dir(), &b) != nil {
		return nil // the store reports a missing file with its own error
	}
	if a.Dev != b.Dev {
		return api.Hinted(fmt.Errorf("register %s: it is on another filesystem than %s, and the reflink disk backend cannot clone across filesystems: %w",
			p, d.images.Dir(), api.ErrFailedPrecondition), "move the file onto that filesystem, or build a managed image with `kiln image import`")
	}
	return nil
}
