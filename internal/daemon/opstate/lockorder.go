package opstate

import (
	"time"

	"github.com/kilnvm/kiln/internal/lockorder"
)

// Names of the registry's locks in a lockorder.Order. Registry.mu comes
// before Op.mu (Prune reads each operation's end under Registry.mu);
// neither takes any other lock.
const (
	LockRegistry = "opstate.Registry.mu"
	LockOp       = "opstate.Op.mu"
)

// NewChecked is New with the registry's locks and those of every
// operation it begins named in order, which must rank LockRegistry before
// LockOp. A nil order is New: plain, unchecked locks.
func NewChecked(now func() time.Time, ttl time.Duration, order *lockorder.Order) *Registry {
	r := New(now, ttl)
	r.order = order
	r.mu.Name, r.mu.Order = LockRegistry, order
	return r
}
