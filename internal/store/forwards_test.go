package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
)

// TestMigration4Forwards upgrades a database of schema version 3 (with a
// VM in it) and checks the forwards table: put, replace a stale record of
// the same host port, list, delete one, delete a VM's, bad input, an
// unknown VM, and deleting the VM deletes its forwards.
func TestMigration4Forwards(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kiln.db")
	db := dbAtVersion(t, path, 3)
	for _, id := range []string{"id1", "id2"} {
		if _, err := db.Exec(`INSERT INTO vms(id, name, state, image, kernel, vcpus, memory_mib, driver, created_at, updated_at)
			VALUES (?, ?, 'running', 'i', 'k', 1, 256, 'qemu', 0, 0)`, id, "box-"+id); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	s, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("migrate from version 3: %v", err)
	}
	defer s.Close()
	if v, _ := s.SchemaVersion(ctx); v < 4 {
		t.Fatalf("schema version %d after migrating", v)
	}
	if fs, err := s.ListForwards(ctx); err != nil || len(fs) != 0 {
		t.Fatalf("forwards before any: %v %+v", err, fs)
	}
	for _, f := range []Forward{
		{VMID: "id1", HostAddr: "127.0.0.1", HostPort: 8080, GuestPort: 80},
		{VMID: "id1", HostAddr: "127.0.0.1", HostPort: 9000, GuestPort: 9000},
		{VMID: "id2", HostAddr: "127.0.0.1", HostPort: 7000, GuestPort: 22},
		// A stale record of port 7000 is replaced by the new holder.
		{VMID: "id1", HostAddr: "127.0.0.1", HostPort: 7000, GuestPort: 23},
	} {
		if err := s.PutForward(ctx, f); err != nil {
			t.Fatalf("put %+v: %v", f, err)
		}
	}
	fs, err := s.ListForwards(ctx)
	if err != nil || len(fs) != 3 {
		t.Fatalf("list: %v %+v", err, fs)
	}
	if fs[0].HostPort != 7000 || fs[0].VMID != "id1" || fs[0].GuestPort != 23 || fs[0].CreatedAt.IsZero() ||
		fs[1].HostPort != 8080 || fs[1].GuestPort != 80 || fs[2].HostPort != 9000 {
		t.Fatalf("list by port: %+v", fs)
	}

	// Bad input and an unknown VM change nothing.
	for _, c := range []struct {
		f    Forward
		want error
	}{
		{Forward{VMID: "id1", HostAddr: "127.0.0.1", HostPort: 0, GuestPort: 80}, api.ErrBadRequest},
		{Forward{VMID: "id1", HostAddr: "127.0.0.1", HostPort: 80, GuestPort: 70000}, api.ErrBadRequest},
		{Forward{VMID: "id1", HostAddr: "", HostPort: 80, GuestPort: 80}, api.ErrBadRequest},
		{Forward{VMID: "nope", HostAddr: "127.0.0.1", HostPort: 81, GuestPort: 80}, api.ErrNotFound},
	} {
		if err := s.PutForward(ctx, c.f); !errors.Is(err, c.want) {
			t.Errorf("put %+v: %v, want %v", c.f, err, c.want)
		}
	}

	// Delete one: only the owner's record of that port goes.
	if err := s.DeleteForward(ctx, "id2", "127.0.0.1", 8080); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteForward(ctx, "id1", "127.0.0.1", 8080); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteForward(ctx, "id1", "127.0.0.1", 8080); err != nil {
		t.Fatalf("deleting an absent forward: %v", err)
	}
	if fs, _ := s.ListForwards(ctx); len(fs) != 2 || fs[0].HostPort != 7000 || fs[1].HostPort != 9000 {
		t.Fatalf("after delete: %+v", fs)
	}

	// A VM's forwards, then the VM with its forwards.
	if err := s.PutForward(ctx, Forward{VMID: "id2", HostAddr: "127.0.0.1", HostPort: 6000, GuestPort: 60}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVMForwards(ctx, "id1"); err != nil {
		t.Fatal(err)
	}
	if fs, _ := s.ListForwards(ctx); len(fs) != 1 || fs[0].VMID != "id2" {
		t.Fatalf("after deleting id1's: %+v", fs)
	}
	if err := s.DeleteVM(ctx, "id2"); err != nil {
		t.Fatal(err)
	}
	if fs, _ := s.ListForwards(ctx); len(fs) != 0 {
		t.Fatalf("forwards outlived their VM: %+v", fs)
	}
}
