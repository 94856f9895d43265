package daemon

import "sync"

// vmLockSet hands out one mutex per VM id: the outermost lock of any
// operation scoped to a single VM (see ARCHITECTURE.md for the order).
type vmLockSet struct {
	mu    sync.Mutex // guards locks; a leaf, held only to find a VM's mutex
	locks map[string]*sync.Mutex
}

func (s *vmLockSet) get(id string) *sync.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.locks == nil {
		s.locks = map[string]*sync.Mutex{}
	}
	m, ok := s.locks[id]
	if !ok {
		m = &sync.Mutex{}
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
