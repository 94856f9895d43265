package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
)

func addVM(t *testing.T, s *Store, id string) {
	t.Helper()
	if err := s.CreateVM(context.Background(), VM{ID: id, Name: "vm-" + id, State: api.StateStopped, Image: "i", Kernel: "k", VCPUs: 1, MemoryMiB: 256, Driver: "qemu"}); err != nil {
		t.Fatal(err)
	}
}

// Migration 2 (net_leases) applies to a database at version 1 that holds
// VMs, which can then get leases.
func TestMigration2LeasesOnV1Database(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kiln.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`,
		migrations[1], `INSERT INTO schema_migrations VALUES (1, 0)`,
		`INSERT INTO vms(id, name, state, image, kernel, vcpus, memory_mib, driver, created_at, updated_at) VALUES ('old1', 'old', 'stopped', 'i', 'k', 1, 256, 'qemu', 0, 0)`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, _ := s.SchemaVersion(ctx); v < 2 {
		t.Fatalf("schema version %d after migrating, want >= 2", v)
	}
	l, err := s.AllocateLease(ctx, "old1", 2, 254, true)
	if err != nil || l.Host != 2 || !l.NAT {
		t.Fatalf("lease for a pre-migration vm: %+v, %v", l, err)
	}
}

func TestLeasesLowestFreeReuseCascadeAndErrors(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	for _, id := range []string{"a", "b", "c", "d"} {
		addVM(t, s, id)
	}
	if _, err := s.AllocateLease(ctx, "ghost", 2, 4, true); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("lease for an unknown vm: got %v, want not_found", err)
	}
	for i, id := range []string{"a", "b", "c"} {
		l, err := s.AllocateLease(ctx, id, 2, 4, id != "b")
		if err != nil || l.Host != 2+i {
			t.Fatalf("lease %s: %+v, %v; want host %d", id, l, err, 2+i)
		}
	}
	if l, _ := s.AllocateLease(ctx, "a", 2, 4, true); l.Host != 2 {
		t.Fatalf("second allocation for a moved it to %d", l.Host)
	}
	if l, _ := s.GetLease(ctx, "b"); l.NAT {
		t.Fatalf("b's NAT opt-out was lost: %+v", l)
	}
	if _, err := s.AllocateLease(ctx, "d", 2, 4, true); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("full range: got %v, want unavailable", err)
	}
	if err := s.SetLeaseTAP(ctx, "ghost", "t0"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("tap for an unknown lease: got %v, want not_found", err)
	}
	if err := s.ReleaseLease(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if l, err := s.AllocateLease(ctx, "d", 2, 4, true); err != nil || l.Host != 3 {
		t.Fatalf("after releasing host 3: %+v, %v", l, err)
	}
	if err := s.SetLeaseTAP(ctx, "a", "kt0001"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVM(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	ls, err := s.ListLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if l.VMID == "a" {
			t.Fatalf("lease outlived its vm: %+v", l)
		}
	}
}

// Concurrent allocations get distinct, lowest addresses.
func TestLeasesConcurrentAllocationsDistinct(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	const n = 24
	for i := 0; i < n; i++ {
		addVM(t, s, fmt.Sprint("v", i))
	}
	var wg sync.WaitGroup
	hosts := make([]int, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := s.AllocateLease(ctx, fmt.Sprint("v", i), 2, 254, true)
			hosts[i], errs[i] = l.Host, err
		}()
	}
	wg.Wait()
	seen := map[int]bool{}
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("v%d: %v", i, errs[i])
		}
		if seen[hosts[i]] || hosts[i] < 2 || hosts[i] >= 2+n {
			t.Fatalf("v%d got host %d (taken or outside 2..%d): %v", i, hosts[i], 1+n, hosts)
		}
		seen[hosts[i]] = true
	}
}
