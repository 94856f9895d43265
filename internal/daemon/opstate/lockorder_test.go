package opstate

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/lockorder"
)

// TestCheckedRegistryOrdersRegistryBeforeOp runs Begin, Stage, List and
// Prune (which nests Op.mu under Registry.mu) with checking on, and shows
// that the reverse nesting panics.
func TestCheckedRegistryOrdersRegistryBeforeOp(t *testing.T) {
	order := lockorder.New(true, lockorder.Level{LockRegistry}, lockorder.Level{LockOp})
	now := time.Unix(1000, 0)
	r := NewChecked(func() time.Time { return now }, time.Minute, order)
	op := r.Begin(context.Background(), "test", "x", func(ctx context.Context, op *Op) (any, error) {
		op.Stage("one", "")
		op.Detail("d")
		return "ok", nil
	})
	select {
	case <-op.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("operation did not end")
	}
	if op.mu.Name != LockOp || op.mu.Order != order || r.mu.Name != LockRegistry {
		t.Fatalf("locks not named in the order: op %q, registry %q", op.mu.Name, r.mu.Name)
	}
	if l := r.List(); len(l) != 1 {
		t.Fatalf("List = %v", l)
	}
	now = now.Add(2 * time.Minute)
	if n := r.Prune(); n != 1 {
		t.Fatalf("Prune removed %d, want 1", n)
	}

	op.mu.Lock()
	msg := func() (msg string) {
		defer func() { msg = fmt.Sprint(recover()) }()
		r.mu.Lock()
		r.mu.Unlock()
		return ""
	}()
	op.mu.Unlock()
	if !strings.Contains(msg, "acquiring "+LockRegistry) || !strings.Contains(msg, "while holding "+LockOp) {
		t.Fatalf("Registry.mu under Op.mu: panic %q", msg)
	}
}
