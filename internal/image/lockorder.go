package image

import "github.com/kilnvm/kiln/internal/lockorder"

// Names of the store's locks in a lockorder.Order (WithLockOrder).
// LockCache is held (shared) across a whole pull, so it comes before the
// other two, which are leaves, and before whatever the pull's progress
// callback takes.
const (
	LockCache   = "image.Store.cacheMu"
	LockStore   = "image.Store.mu"
	LockFlights = "image.Store.flights.mu"
)

// WithLockOrder names the store's locks in order, which must rank
// LockCache before LockStore and LockFlights; without it they are
// unchecked.
func WithLockOrder(order *lockorder.Order) Option {
	return func(s *Store) {
		s.cacheMu.Name, s.cacheMu.Order = LockCache, order
		s.mu.Name, s.mu.Order = LockStore, order
		s.pulls.mu.Name, s.pulls.mu.Order = LockFlights, order
	}
}
