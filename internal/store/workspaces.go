package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kilnvm/kiln/internal/api"
)

// Workspace is the host repository copied into a VM (table workspaces,
// one per VM, deleted with it).
type Workspace struct {
	VMID, HostPath, GuestPath, HeadCommit, Branch string
	UpdatedAt                                     time.Time
}

// SetWorkspace records (or replaces) a VM's workspace.
func (s *Store) SetWorkspace(ctx context.Context, w Workspace) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO workspaces(vm_id, host_path, guest_path, head_commit, branch, updated_at) VALUES (?,?,?,?,?,?)
		ON CONFLICT(vm_id) DO UPDATE SET host_path = excluded.host_path, guest_path = excluded.guest_path,
		head_commit = excluded.head_commit, branch = excluded.branch, updated_at = excluded.updated_at`,
		w.VMID, w.HostPath, w.GuestPath, w.HeadCommit, w.Branch, time.Now().UnixNano())
	if err != nil && strings.Contains(err.Error(), "FOREIGN KEY constraint failed") {
		return fmt.Errorf("vm %s: %w", w.VMID, api.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("record the workspace of vm %s: %w", w.VMID, err)
	}
	return nil
}

// GetWorkspace returns a VM's workspace; none is api.ErrNotFound.
func (s *Store) GetWorkspace(ctx context.Context, vmID string) (Workspace, error) {
	w := Workspace{VMID: vmID}
	var u int64
	err := s.db.QueryRowContext(ctx, `SELECT host_path, guest_path, head_commit, branch, updated_at FROM workspaces WHERE vm_id = ?`, vmID).
		Scan(&w.HostPath, &w.GuestPath, &w.HeadCommit, &w.Branch, &u)
	if errors.Is(err, sql.ErrNoRows) {
		return Workspace{}, fmt.Errorf("vm %s has no workspace: %w", vmID, api.ErrNotFound)
	}
	if err != nil {
		return Workspace{}, fmt.Errorf("get the workspace of vm %s: %w", vmID, err)
	}
	w.UpdatedAt = time.Unix(0, u)
	return w, nil
}
