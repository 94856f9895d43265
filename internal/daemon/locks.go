package daemon

import "github.com/kilnvm/kiln/internal/lockorder"

// vmLockSet hands out one mutex per VM id: the outermost lock of any
// operation scoped to a single VM (see ARCHITECTURE.md for the order).
type vmLockSet struct {
	mu    lockorder.Mutex // guards locks; a leaf, held only to find a VM's mutex
	locks map[string]*lockorder.Mutex
	order *lockorder.Order // of the VM mutexes (initLocks); nil: unchecked
}

func (s *vmLockSet) get(id string) *lockorder.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.locks == nil {
		s.locks = map[string]*lockorder.Mutex{}
	}
	m, ok := s.locks[id]
	if !ok {
		m = &lockorder.Mutex{Name: lockVM, Order: s.order}
		s.locks[id] = m
	}
	return m
}

// forget drops a deleted VM's mutex. Call it while holding that mutex.
func (s *vmLockSet) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.locks, id)
}
