package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"

	"github.com/kilnvm/kiln/internal/api"
)

// reconcile makes the store agree with the host after a restart or crash:
// a VM whose create was cut short is rolled back completely; a running VM
// whose VMM is alive is kept; one whose VMM died is marked stopped; a
// stopped VM with a live VMM (a crash between start and record) is killed;
// VM directories with no record are removed.
func (d *Daemon) reconcile(ctx context.Context) error {
	if err := d.kernels.Reconcile(ctx); err != nil {
		return err
	}
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	var errs []error
	for _, v := range vms {
		known[v.ID] = true
		drv, err := d.driverFor(v)
		if err != nil {
			// Its VMM may well be running: leave the VM and its files
			// alone until a daemon that has its driver looks at it.
			d.logger.Warn("reconcile: leaving vm alone", "vm", v.Name, "vm_id", v.ID, "state", v.State, "err", err)
			continue
		}
		_, alive := d.liveHandle(drv, v.ID)
		log := d.logger.With("vm", v.Name, "vm_id", v.ID, "state", v.State, "vmm_alive", alive)
		switch {
		case v.State == api.StateCreating:
			log.Warn("reconcile: rolling back a create the daemon did not finish")
			if err := d.destroyLocked(ctx, v); err != nil {
				errs = append(errs, err)
			}
			delete(known, v.ID)
		case v.State == api.StateRunning && alive:
			log.Info("reconcile: vm still running")
		case v.State == api.StateRunning:
			log.Warn("reconcile: vmm exited while the daemon was away; marking stopped")
			errs = append(errs, d.markStopped(ctx, v.ID, "the VM stopped while the daemon was not running"))
		case alive:
			log.Warn("reconcile: killing a vmm the store says is stopped")
			errs = append(errs, d.killLocked(ctx, v))
		}
	}
	errs = append(errs, d.removeOrphans(known))
	return errors.Join(errs...)
}

func (d *Daemon) removeOrphans(known map[string]bool) error {
	var errs []error
	for _, base := range []string{filepath.Join(d.layout.StateDir, "vms"), filepath.Join(d.layout.RunDir, "vm")} {
		entries, err := os.ReadDir(base)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !known[e.Name()] {
				d.logger.Warn("reconcile: removing files of an unknown vm", "dir", filepath.Join(base, e.Name()))
				errs = append(errs, os.RemoveAll(filepath.Join(base, e.Name())))
			}
		}
	}
	return errors.Join(errs...)
}
