package daemon

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/daemon/opstate"
	"github.com/kilnvm/kiln/internal/kernel"
	"github.com/kilnvm/kiln/internal/store"
)

func kernelToAPI(k kernel.Kernel) api.Kernel {
	return api.Kernel{Name: k.Name, Release: k.Release, Source: k.Source, Format: string(k.Format),
		Modules: k.Modules, Size: k.VmlinuzSize + k.InitramfsSize, CreatedAt: k.Created}
}

func (d *Daemon) handleListKernels(w http.ResponseWriter, r *http.Request) error {
	ks, err := d.kernels.List(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, convert(ks, kernelToAPI))
}

func (d *Daemon) handleGetKernel(w http.ResponseWriter, r *http.Request) error {
	k, err := d.kernels.Get(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, kernelToAPI(k))
}

func (d *Daemon) handleDeleteKernel(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	d.imageOpsMu.Lock()
	defer d.imageOpsMu.Unlock()
	if err := d.refuseInUse(r.Context(), "kernel", name, func(v store.VM) string { return v.Kernel }); err != nil {
		return err
	}
	if err := d.kernels.Remove(r.Context(), name); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (d *Daemon) handleImportKernel(w http.ResponseWriter, r *http.Request) error {
	var req api.ImportKernelRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if err := api.ValidateName("kernel", req.Name); err != nil {
		return err
	}
	n := 0
	for _, set := range []bool{req.Deb != "", req.Vmlinuz != "" || req.ModulesDir != "", req.FromHost} {
		if set {
			n++
		}
	}
	if n != 1 {
		return api.Errorf(api.ErrBadRequest, "name exactly one kernel source: a .deb, --vmlinuz with --modules, or --from-host")
	}
	if (req.Vmlinuz == "") != (req.ModulesDir == "") {
		return api.Errorf(api.ErrBadRequest, "--vmlinuz and --modules go together")
	}
	for _, p := range []string{req.Deb, req.Vmlinuz, req.ModulesDir} {
		if p != "" && !filepath.IsAbs(p) {
			return api.Errorf(api.ErrBadRequest, "path %q must be absolute", p)
		}
	}
	src := kernel.Source{Deb: req.Deb, Vmlinuz: req.Vmlinuz, ModulesDir: req.ModulesDir, FromHost: req.FromHost}
	return acceptedOp(w, d.ops.Begin(r.Context(), "kernel.import", req.Name, func(ctx context.Context, op *opstate.Op) (any, error) {
		op.Stage("import kernel", "")
		d.imageOpsMu.Lock()
		defer d.imageOpsMu.Unlock()
		k, err := d.kernels.Import(ctx, req.Name, src)
		if err != nil {
			return nil, err
		}
		return kernelToAPI(k), nil
	}))
}

func (d *Daemon) handlePullKernel(w http.ResponseWriter, r *http.Request) error {
	var req api.PullKernelRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if req.Distro == "" {
		req.Distro = "debian"
	}
	if req.Name == "" {
		req.Name = req.Distro
	}
	if err := api.ValidateName("kernel", req.Name); err != nil {
		return err
	}
	if req.Distro != "debian" {
		return api.Errorf(api.ErrBadRequest, "distro %q: only \"debian\" kernels can be pulled", req.Distro)
	}
	return acceptedOp(w, d.ops.Begin(r.Context(), "kernel.pull", req.Name, func(ctx context.Context, op *opstate.Op) (any, error) {
		op.Stage("download and import", "linux-image-amd64 through apt")
		d.imageOpsMu.Lock()
		defer d.imageOpsMu.Unlock()
		k, err := d.kernels.PullDebian(ctx, req.Name)
		if err != nil {
			return nil, err
		}
		return kernelToAPI(k), nil
	}))
}

// refuseInUse fails with conflict when a VM refers to name through ref
// (its image or kernel). Creates do not take imageOpsMu, so one racing a
// removal can pass this check; it then fails at "prepare disks" or "write
// config" and rolls back, leaving nothing behind.
func (d *Daemon) refuseInUse(ctx context.Context, kind, name string, ref func(store.VM) string) error {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	for _, v := range vms {
		if ref(v) == name {
			return fmt.Errorf("%s %q is used by vm %q: %w", kind, name, v.Name, api.ErrConflict)
		}
	}
	return nil
}

// convert maps a slice, e.g. store records to wire types.
func convert[T, U any](in []T, f func(T) U) []U {
	out := make([]U, 0, len(in))
	for _, x := range in {
		out = append(out, f(x))
	}
	return out
}
