package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
)

func open(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestMigrationsApplyOnceAndReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kiln.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := s.SchemaVersion(ctx)
	if v != len(migrations)-1 {
		t.Fatalf("schema version %d, want %d", v, len(migrations)-1)
	}
	if err := s.CreateVM(ctx, VM{ID: "a1", Name: "box", State: api.StateStopped, Image: "i", Kernel: "k", VCPUs: 1, MemoryMiB: 256, Driver: "qemu"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	if _, err := s.GetVM(ctx, "box"); err != nil {
		t.Fatalf("vm lost across reopen: %v", err)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kiln.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.Exec(`INSERT INTO schema_migrations VALUES (999, 0)`); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(ctx, path); !errors.Is(err, api.ErrFailedPrecondition) {
		t.Fatalf("opening a newer schema: got %v, want failed_precondition", err)
	}
}

func TestVMCRUD(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	vm := VM{ID: "id1", Name: "box", State: api.StateCreating, Image: "debian", Kernel: "debian", VCPUs: 2, MemoryMiB: 512, Driver: "qemu"}
	if err := s.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	dup := vm
	dup.ID = "id2"
	if err := s.CreateVM(ctx, dup); !errors.Is(err, api.ErrAlreadyExists) {
		t.Fatalf("duplicate name: got %v, want already_exists", err)
	}
	bad := vm
	bad.ID, bad.Name = "id3", "Bad_Name"
	if err := s.CreateVM(ctx, bad); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("bad name: got %v, want bad_request", err)
	}
	if err := s.SetVMState(ctx, "id1", api.StateRunning, ""); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "id1")
	if err != nil || got.State != api.StateRunning || got.Name != "box" {
		t.Fatalf("get by id: %+v %v", got, err)
	}
	list, _ := s.ListVMs(ctx)
	if len(list) != 1 {
		t.Fatalf("list: %d vms, want 1", len(list))
	}
	if err := s.SetVMState(ctx, "nope", api.StateRunning, ""); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("set state of absent vm: %v", err)
	}
	if err := s.DeleteVM(ctx, "id1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetVM(ctx, "box"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}
