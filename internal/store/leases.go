package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/network"
)

// AllocateLease gives vmID the lowest free host number in [lo, hi], or
// returns the lease it already has. The choice and the insert are one
// statement, so concurrent allocations never pick the same number; a lease
// goes with its VM record (ON DELETE CASCADE).
func (s *Store) AllocateLease(ctx context.Context, vmID string, lo, hi int, nat bool) (network.Lease, error) {
	if l, err := s.GetLease(ctx, vmID); err == nil {
		return l, nil
	} else if !errors.Is(err, api.ErrNotFound) {
		return network.Lease{}, err
	}
	for attempt := 0; attempt < 5; attempt++ {
		_, err := s.db.ExecContext(ctx, `INSERT INTO net_leases(vm_id, host, nat)
			SELECT ?, MIN(h), ? FROM (SELECT ? AS h UNION ALL SELECT host + 1 FROM net_leases)
			WHERE h <= ? AND h >= ? AND h NOT IN (SELECT host FROM net_leases)`, vmID, nat, lo, hi, lo)
		switch {
		case err == nil:
			return s.GetLease(ctx, vmID)
		case strings.Contains(err.Error(), "NOT NULL constraint failed"):
			return network.Lease{}, fmt.Errorf("no free address left (%d in use): %w", hi-lo+1, api.ErrUnavailable)
		case strings.Contains(err.Error(), "FOREIGN KEY constraint failed"):
			return network.Lease{}, fmt.Errorf("vm %s: %w", vmID, api.ErrNotFound)
		case strings.Contains(err.Error(), "UNIQUE constraint failed: net_leases.vm_id"):
			return s.GetLease(ctx, vmID)
		case strings.Contains(err.Error(), "UNIQUE constraint failed"):
			continue // lost a race for that number: choose again
		default:
			return network.Lease{}, fmt.Errorf("allocate lease for vm %s: %w", vmID, err)
		}
	}
	return network.Lease{}, fmt.Errorf("allocate lease for vm %s: too much contention: %w", vmID, api.ErrUnavailable)
}

// GetLease returns vmID's lease.
func (s *Store) GetLease(ctx context.Context, vmID string) (network.Lease, error) {
	l := network.Lease{VMID: vmID}
	err := s.db.QueryRowContext(ctx, `SELECT host, tap, nat FROM net_leases WHERE vm_id = ?`, vmID).Scan(&l.Host, &l.TAP, &l.NAT)
	if errors.Is(err, sql.ErrNoRows) {
		return l, fmt.Errorf("lease of vm %s: %w", vmID, api.ErrNotFound)
	}
	if err != nil {
		return l, fmt.Errorf("get lease of vm %s: %w", vmID, err)
	}
	return l, nil
}

// ListLeases returns every lease by host number.
func (s *Store) ListLeases(ctx context.Context) ([]network.Lease, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT vm_id, host, tap, nat FROM net_leases ORDER BY host`)
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	defer rows.Close()
	var out []network.Lease
	for rows.Next() {
		var l network.Lease
		if err := rows.Scan(&l.VMID, &l.Host, &l.TAP, &l.NAT); err != nil {
			return nil, fmt.Errorf("list leases: %w", err)
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// SetLeaseTAP records the TAP vmID holds ("" for none).
func (s *Store) SetLeaseTAP(ctx context.Context, vmID, tap string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE net_leases SET tap = ? WHERE vm_id = ?`, tap, vmID)
	if err != nil {
		return fmt.Errorf("record TAP of vm %s: %w", vmID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("lease of vm %s: %w", vmID, api.ErrNotFound)
	}
	return nil
}

// ReleaseLease deletes vmID's lease; none is not an error.
func (s *Store) ReleaseLease(ctx context.Context, vmID string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM net_leases WHERE vm_id = ?`, vmID); err != nil {
		return fmt.Errorf("release lease of vm %s: %w", vmID, err)
	}
	return nil
}

var _ network.Leases = (*Store)(nil)
