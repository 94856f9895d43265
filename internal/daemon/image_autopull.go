package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/daemon/opstate"
	"github.com/kilnvm/kiln/internal/image"
)

// stagePullImage is the VM create stage that makes an absent catalog image
// (the default image on first use) before the VM is built from it.
const stagePullImage = "pull image"

// imageOrCatalog is CreateVM's answer when the image name is absent
// (getErr from the store): a catalog image stands in (its kernel is
// known; the create operation makes the image), anything else keeps
// getErr.
func (d *Daemon) imageOrCatalog(name string, getErr error) (image.Image, error) {
	if !errors.Is(getErr, api.ErrNotFound) {
		return image.Image{}, getErr
	}
	e, err := image.LookupCatalogIn(d.cfg.ImageCatalog, name)
	if err != nil {
		return image.Image{}, getErr
	}
	return image.Image{Name: name, KernelName: e.Kernel}, nil
}

// ensureImage makes the image name from the catalog when it is absent, as
// the create stage stagePullImage; a present image costs one stat. A pull
// of the same name already running (a concurrent create, `kiln image
// pull`) is joined, not repeated. Call with the VM's lock held.
func (d *Daemon) ensureImage(ctx context.Context, op *opstate.Op, name string) error {
	_, err := d.images.Get(ctx, name)
	if !errors.Is(err, api.ErrNotFound) {
		return err
	}
	e, cerr := image.LookupCatalogIn(d.cfg.ImageCatalog, name)
	if cerr != nil {
		return err
	}
	d.stage(op, stagePullImage, name)
	_, err = d.makeCatalogImage(ctx, op, e, name, image.BuildOptions{KernelName: e.Kernel}, false)
	if errors.Is(err, api.ErrAlreadyExists) {
		return nil // made meanwhile by a build that did not coalesce with ours
	}
	if err != nil {
		return fmt.Errorf("make catalog image %q: %w", name, err)
	}
	return nil
}
