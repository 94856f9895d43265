// Package store keeps kiln's durable intent in SQLite (pure Go driver,
// WAL, foreign keys, busy timeout) with forward-only migrations. Live
// handles (pids, sockets) are not stored here but in each VM's handles.json.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/kilnvm/kiln/internal/api"
)

// Store is the database. It is safe for concurrent use.
type Store struct {
	db *sql.DB
}

// migrations are applied in order, each once, recorded in schema_migrations.
// Never edit a released migration: append a new one, with a test.
var migrations = []string{
	1: `CREATE TABLE vms (
		id TEXT PRIMARY KEY,
		name TEXT NOT NULL UNIQUE,
		state TEXT NOT NULL,
		image TEXT NOT NULL,
		kernel TEXT NOT NULL,
		vcpus INTEGER NOT NULL,
		memory_mib INTEGER NOT NULL,
		driver TEXT NOT NULL,
		host_key_fp TEXT NOT NULL DEFAULT '',
		last_error TEXT NOT NULL DEFAULT '',
		created_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL
	)`,
	// 2: network leases (internal/network IPAM), see leases.go.
	2: `CREATE TABLE net_leases (
		vm_id TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
		host INTEGER NOT NULL UNIQUE,
		tap TEXT NOT NULL DEFAULT '',
		nat INTEGER NOT NULL DEFAULT 1
	)`,
	// 3: the workspace recorded on a VM (internal/workspace), see workspaces.go.
	3: `CREATE TABLE workspaces (
		vm_id TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
		host_path TEXT NOT NULL,
		guest_path TEXT NOT NULL,
		head_commit TEXT NOT NULL,
		branch TEXT NOT NULL DEFAULT '',
		updated_at INTEGER NOT NULL
	)`,
	// 4: port forwards to restore after a daemon restart, see forwards.go.
	4: `CREATE TABLE forwards (
		host_addr TEXT NOT NULL,
		host_port INTEGER NOT NULL,
		vm_id TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
		guest_port INTEGER NOT NULL,
		created_at INTEGER NOT NULL,
		PRIMARY KEY (host_addr, host_port)
	)`,
}

// Open opens (creating if needed) the database at path and migrates it.
func Open(ctx context.Context, path string) (*Store, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate store %s: %w", path, err)
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return err
	}
	var cur int
	if err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&cur); err != nil {
		return err
	}
	if cur > len(migrations)-1 {
		return fmt.Errorf("database schema version %d is newer than this kiln (%d): %w", cur, len(migrations)-1, api.ErrFailedPrecondition)
	}
	for v := cur + 1; v < len(migrations); v++ {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations(version, applied_at) VALUES (?, ?)`, v, time.Now().Unix()); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

// SchemaVersion is the latest applied migration.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

// VM is a VM's durable record.
type VM struct {
	ID, Name, State, Image, Kernel, Driver string
	VCPUs, MemoryMiB                       int
	HostKeyFP, LastError                   string
	CreatedAt, UpdatedAt                   time.Time
}

const vmCols = `id, name, state, image, kernel, vcpus, memory_mib, driver, host_key_fp, last_error, created_at, updated_at`

func scanVM(sc interface{ Scan(...any) error }) (VM, error) {
	var v VM
	var c, u int64
	err := sc.Scan(&v.ID, &v.Name, &v.State, &v.Image, &v.Kernel, &v.VCPUs, &v.MemoryMiB, &v.Driver, &v.HostKeyFP, &v.LastError, &c, &u)
	v.CreatedAt, v.UpdatedAt = time.Unix(0, c), time.Unix(0, u)
	return v, err
}

// CreateVM inserts v. A taken name fails with api.ErrAlreadyExists.
func (s *Store) CreateVM(ctx context.Context, v VM) error {
	if err := api.ValidateName("VM", v.Name); err != nil {
		return err
	}
	now := time.Now()
	_, err := s.db.ExecContext(ctx, `INSERT INTO vms(`+vmCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)`,
		v.ID, v.Name, v.State, v.Image, v.Kernel, v.VCPUs, v.MemoryMiB, v.Driver, v.HostKeyFP, v.LastError, now.UnixNano(), now.UnixNano())
	if err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed") {
		return fmt.Errorf("vm %q: %w", v.Name, api.ErrAlreadyExists)
	}
	if err != nil {
		return fmt.Errorf("insert vm %q: %w", v.Name, err)
	}
	return nil
}

// GetVM finds a VM by name or id.
func (s *Store) GetVM(ctx context.Context, ref string) (VM, error) {
	v, err := scanVM(s.db.QueryRowContext(ctx, `SELECT `+vmCols+` FROM vms WHERE name = ? OR id = ?`, ref, ref))
	if errors.Is(err, sql.ErrNoRows) {
		return VM{}, fmt.Errorf("vm %q: %w", ref, api.ErrNotFound)
	}
	if err != nil {
		return VM{}, fmt.Errorf("get vm %q: %w", ref, err)
	}
	return v, nil
}

// ListVMs returns every VM, oldest first.
func (s *Store) ListVMs(ctx context.Context) ([]VM, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+vmCols+` FROM vms ORDER BY created_at, name`)
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	defer rows.Close()
	var out []VM
	for rows.Next() {
		v, err := scanVM(rows)
		if err != nil {
			return nil, fmt.Errorf("list vms: %w", err)
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// SetVMState records a VM's state and last error.
func (s *Store) SetVMState(ctx context.Context, id, state, lastError string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET state = ?, last_error = ?, updated_at = ? WHERE id = ?`, state, lastError, time.Now().UnixNano(), id)
	if err != nil {
		return fmt.Errorf("set vm %s state: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("vm %s: %w", id, api.ErrNotFound)
	}
	return nil
}

// SetVMHostKey records the fingerprint of a VM's SSH host key.
func (s *Store) SetVMHostKey(ctx context.Context, id, fp string) error {
	_, err := s.db.ExecContext(ctx, `UPDATE vms SET host_key_fp = ?, updated_at = ? WHERE id = ?`, fp, time.Now().UnixNano(), id)
	return err
}

// DeleteVM removes a VM's record; deleting an absent VM is not an error.
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM vms WHERE id = ?`, id); err != nil {
		return fmt.Errorf("delete vm %s: %w", id, err)
	}
	return nil
}
