package store

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
)

// TestMigration3Workspaces upgrades a database of schema version 2 (with
// a VM in it) and checks the workspaces table: set, replace, get, the VM
// must exist, and deleting the VM deletes its workspace.
func TestMigration3Workspaces(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kiln.db")
	db := dbAtVersion(t, path, 2)
	if _, err := db.Exec(`INSERT INTO vms(id, name, state, image, kernel, vcpus, memory_mib, driver, created_at, updated_at)
		VALUES ('id1', 'box', 'running', 'i', 'k', 1, 256, 'qemu', 0, 0)`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("migrate from version 2: %v", err)
	}
	defer s.Close()
	if v, _ := s.SchemaVersion(ctx); v < 3 {
		t.Fatalf("schema version %d after migrating", v)
	}
	if _, err := s.GetWorkspace(ctx, "id1"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("workspace before any: %v", err)
	}
	w := Workspace{VMID: "id1", HostPath: "/src/repo", GuestPath: "/root/repo", HeadCommit: "0123456789012345678901234567890123456789", Branch: "main"}
	if err := s.SetWorkspace(ctx, w); err != nil {
		t.Fatal(err)
	}
	w.GuestPath = "/work"
	if err := s.SetWorkspace(ctx, w); err != nil {
		t.Fatalf("replace: %v", err)
	}
	got, err := s.GetWorkspace(ctx, "id1")
	if err != nil || got.GuestPath != "/work" || got.HostPath != "/src/repo" || got.Branch != "main" {
		t.Fatalf("get: %+v %v", got, err)
	}
	if err := s.SetWorkspace(ctx, Workspace{VMID: "nope", HostPath: "/a", GuestPath: "/b", HeadCommit: "c"}); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("workspace of an absent vm: %v", err)
	}
	if err := s.DeleteVM(ctx, "id1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetWorkspace(ctx, "id1"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("workspace outlived its vm: %v", err)
	}
}

// dbAtVersion writes a database at path migrated only up to version, as
// an older kiln left it, and returns it open for the test to fill.
func dbAtVersion(t *testing.T, path string, version int) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	for v := 1; v <= version; v++ {
		if _, err := db.Exec(migrations[v]); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`INSERT INTO schema_migrations VALUES (?, 0)`, v); err != nil {
			t.Fatal(err)
		}
	}
	return db
}
