package daemon

import (
	"context"
	"fmt"
	"net/http"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/store"
)

var headCommitRE = regexp.MustCompile(`^[0-9a-f]{40}([0-9a-f]{24})?$`)

// validateWorkspace checks a workspace record: absolute clean paths and a
// full commit id. The CLI copies the repository; the daemon only records
// where it went, so `vm exec` can run there.
func validateWorkspace(ws api.Workspace) error {
	switch {
	case !filepath.IsAbs(ws.HostPath) || filepath.Clean(ws.HostPath) != ws.HostPath:
		return fmt.Errorf("workspace host path %q: want a clean absolute path: %w", ws.HostPath, api.ErrBadRequest)
	case !path.IsAbs(ws.GuestPath) || path.Clean(ws.GuestPath) != ws.GuestPath || ws.GuestPath == "/" || strings.ContainsAny(ws.GuestPath, "\x00\n"):
		return fmt.Errorf("workspace guest path %q: want a clean absolute directory other than /: %w", ws.GuestPath, api.ErrBadRequest)
	case !headCommitRE.MatchString(ws.HeadCommit):
		return fmt.Errorf("workspace head commit %q: want a full commit id: %w", ws.HeadCommit, api.ErrBadRequest)
	case strings.ContainsAny(ws.Branch, "\x00\n "):
		return fmt.Errorf("workspace branch %q: %w", ws.Branch, api.ErrBadRequest)
	}
	return nil
}

// SetWorkspace records the workspace of a VM, under the VM's lock.
func (d *Daemon) SetWorkspace(ctx context.Context, ref string, ws api.Workspace) (api.Workspace, error) {
	if err := validateWorkspace(ws); err != nil {
		return api.Workspace{}, err
	}
	err := d.withVM(ctx, ref, func(v store.VM) error {
		return d.store.SetWorkspace(ctx, store.Workspace{VMID: v.ID, HostPath: ws.HostPath, GuestPath: ws.GuestPath, HeadCommit: ws.HeadCommit, Branch: ws.Branch})
	})
	if err != nil {
		return api.Workspace{}, err
	}
	d.log(ctx).Info("workspace recorded", "vm", ref, "host_path", ws.HostPath, "guest_path", ws.GuestPath, "head", ws.HeadCommit)
	return ws, nil
}

// workspaceOf is a VM's workspace, or nil when it has none.
func (d *Daemon) workspaceOf(ctx context.Context, vmID string) *api.Workspace {
	w, err := d.store.GetWorkspace(ctx, vmID)
	if err != nil {
		return nil
	}
	return &api.Workspace{HostPath: w.HostPath, GuestPath: w.GuestPath, HeadCommit: w.HeadCommit, Branch: w.Branch}
}

func (d *Daemon) handleSetWorkspace(w http.ResponseWriter, r *http.Request) error {
	var ws api.Workspace
	if err := decodeBody(r, &ws); err != nil {
		return err
	}
	out, err := d.SetWorkspace(r.Context(), r.PathValue("name"), ws)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out)
}
