package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/kilnvm/kiln/internal/api"
)

// Forward is a port forward the daemon restores after a restart while its
// VM keeps running (table forwards, keyed by the host address and port,
// deleted with the VM).
type Forward struct {
	VMID      string
	HostAddr  string
	HostPort  int
	GuestPort int
	CreatedAt time.Time
}

// PutForward records f. The caller holds the listener on f's host port,
// so a record already there for that port is stale (its daemon died
// before removing it) and is replaced. An unknown VM is api.ErrNotFound.
func (s *Store) PutForward(ctx context.Context, f Forward) error {
	if f.HostPort < 1 || f.HostPort > 65535 || f.GuestPort < 1 || f.GuestPort > 65535 || f.HostAddr == "" {
		return api.Errorf(api.ErrBadRequest, "forward %s:%d -> %d: want a host address and ports 1-65535", f.HostAddr, f.HostPort, f.GuestPort)
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO forwards(host_addr, host_port, vm_id, guest_port, created_at) VALUES (?,?,?,?,?)
		ON CONFLICT(host_addr, host_port) DO UPDATE SET vm_id = excluded.vm_id, guest_port = excluded.guest_port, created_at = excluded.created_at`,
		f.HostAddr, f.HostPort, f.VMID, f.GuestPort, time.Now().UnixNano())
	if err != nil && strings.Contains(err.Error(), "FOREIGN KEY constraint failed") {
		return fmt.Errorf("vm %s: %w", f.VMID, api.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("record forward %s:%d of vm %s: %w", f.HostAddr, f.HostPort, f.VMID, err)
	}
	return nil
}

// DeleteForward removes vmID's forward of hostAddr:hostPort; an absent
// record is not an error.
func (s *Store) DeleteForward(ctx context.Context, vmID, hostAddr string, hostPort int) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM forwards WHERE vm_id = ? AND host_addr = ? AND host_port = ?`, vmID, hostAddr, hostPort); err != nil {
		return fmt.Errorf("delete forward %s:%d of vm %s: %w", hostAddr, hostPort, vmID, err)
	}
	return nil
}

// DeleteVMForwards removes every forward record of vmID.
func (s *Store) DeleteVMForwards(ctx context.Context, vmID string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM forwards WHERE vm_id = ?`, vmID); err != nil {
		return fmt.Errorf("delete forwards of vm %s: %w", vmID, err)
	}
	return nil
}

// ListForwards returns every forward record by host address and port.
func (s *Store) ListForwards(ctx context.Context) ([]Forward, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT vm_id, host_addr, host_port, guest_port, created_at FROM forwards ORDER BY host_addr, host_port`)
	if err != nil {
		return nil, fmt.Errorf("list forwards: %w", err)
	}
	defer rows.Close()
	var out []Forward
	for rows.Next() {
		var f Forward
		var c int64
		if err := rows.Scan(&f.VMID, &f.HostAddr, &f.HostPort, &f.GuestPort, &c); err != nil {
			return nil, fmt.Errorf("list forwards: %w", err)
		}
		f.CreatedAt = time.Unix(0, c)
		out = append(out, f)
	}
	return out, rows.Err()
}
