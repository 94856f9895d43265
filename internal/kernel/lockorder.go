package kernel

import "github.com/kilnvm/kiln/internal/lockorder"

// LockELF is the name of Store.elfMu in a lockorder.Order: a leaf, held
// across an ELF vmlinux extraction, which takes no other lock.
const LockELF = "kernel.Store.elfMu"

// SetLockOrder names the store's lock in order; call it before first use.
// Without it the lock is unchecked.
func (s *Store) SetLockOrder(order *lockorder.Order) {
	s.elfMu.Name, s.elfMu.Order = LockELF, order
}
