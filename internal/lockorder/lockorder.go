// Package lockorder provides mutexes that know their place in a documented
// lock order and, when checking is on (tests, KILN_LOCKCHECK=1), panic on
// any acquisition that inverts it.
//
// An Order is a list of levels, outermost first. A goroutine may acquire a
// lock only if its level is strictly after the level of every lock it
// already holds: locks of one level are peers that are never held together
// (two VM locks, createVMMu and imageOpsMu, any two leaves), and a lock of
// the last level (a leaf) is never held while acquiring anything named in
// the order. An RWMutex's shared holds are checked like exclusive ones.
// Locks not made from this package are not seen.
//
// With checking off a Mutex is a sync.Mutex plus one branch per call. With
// checking on, the Order records per goroutine (its id parsed from
// runtime.Stack, in check mode only) which of its locks are held and where
// they were taken, so a violation names both locks, both places and the
// documented order.
package lockorder

import (
	"bytes"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
)

// Level is one step of an Order: the names of peer locks, never held
// together.
type Level []string

// Order is a documented lock order and, when checking is on, the record of
// which of its locks each goroutine holds. Create it with New; share one
// Order among all the locks it orders.
type Order struct {
	// Immutable after New.
	levels []Level
	rank   map[string]int
	check  bool

	mu   sync.Mutex          // guards held; never held while acquiring an ordered lock
	held map[uint64][]holder // goroutine id → ordered locks it holds, in acquisition order
}

// holder is one held ordered lock, exclusively or shared.
type holder struct {
	lock any    // the *Mutex or *RWMutex, compared by identity
	name string // its Name
	rank int
	at   string // file:line of the Lock call
	g    uint64 // goroutine that locked it
}

// New returns the order of levels, outermost first. With check false the
// Order only names the levels (String, Levels) and its mutexes check
// nothing. It panics when a name is empty or appears twice: the order is
// a constant of the program.
func New(check bool, levels ...Level) *Order {
	o := &Order{levels: levels, rank: map[string]int{}, check: check, held: map[uint64][]holder{}}
	for i, l := range levels {
		if len(l) == 0 {
			panic(fmt.Sprintf("lockorder: level %d is empty", i))
		}
		for _, n := range l {
			if n == "" {
				panic(fmt.Sprintf("lockorder: level %d has an empty name", i))
			}
			if _, dup := o.rank[n]; dup {
				panic(fmt.Sprintf("lockorder: %q appears twice in the order", n))
			}
			o.rank[n] = i
		}
	}
	return o
}

// Checking reports whether the order is enforced.
func (o *Order) Checking() bool { return o != nil && o.check }

// Levels returns a copy of the levels, outermost first.
func (o *Order) Levels() []Level {
	out := make([]Level, len(o.levels))
	for i, l := range o.levels {
		out[i] = append(Level(nil), l...)
	}
	return out
}

// Rank returns the index of name's level, or false when the order does not
// name it.
func (o *Order) Rank(name string) (int, bool) {
	r, ok := o.rank[name]
	return r, ok
}

// String writes the order as ARCHITECTURE.md does:
// "a → {b, c} → {d, e}".
func (o *Order) String() string {
	parts := make([]string, len(o.levels))
	for i, l := range o.levels {
		if len(l) == 1 {
			parts[i] = l[0]
		} else {
			parts[i] = "{" + strings.Join(l, ", ") + "}"
		}
	}
	return strings.Join(parts, " → ")
}

// Held returns the names of the ordered locks the calling goroutine holds,
// in acquisition order; nil when checking is off. For tests and messages.
func (o *Order) Held() []string {
	if !o.Checking() {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []string
	for _, h := range o.held[goid()] {
		out = append(out, h.name)
	}
	return out
}

// Mutex is a sync.Mutex with a name from an Order. Set Name and Order
// before first use and never change them; the zero Mutex (no Order) is a
// plain, unchecked mutex. A Mutex must not be copied after first use.
type Mutex struct {
	Name  string
	Order *Order

	mu sync.Mutex
}

// Lock acquires m; in check mode it first panics if that would invert the
// order.
func (m *Mutex) Lock() {
	if m.Order.Checking() {
		m.Order.acquire(m.Name, m, m.mu.Lock)
		return
	}
	m.mu.Lock()
}

// Unlock releases m. As with sync.Mutex, another goroutine than the one
// that locked m may unlock it; the record follows.
func (m *Mutex) Unlock() {
	if m.Order.Checking() {
		m.Order.release(m.Name, m)
	}
	m.mu.Unlock()
}

// RWMutex is a sync.RWMutex with a name from an Order, like Mutex. A shared
// hold (RLock) is checked and recorded exactly as an exclusive one: it
// must come after every lock its goroutine holds, and while it is held
// nothing of its level or before may be taken — not even another RLock of
// the same RWMutex, which deadlocks once a writer waits between the two.
// The zero RWMutex (no Order) is a plain, unchecked one.
type RWMutex struct {
	Name  string
	Order *Order

	mu sync.RWMutex
}

// Lock acquires m exclusively; in check mode it first panics if that
// would invert the order.
func (m *RWMutex) Lock() {
	if m.Order.Checking() {
		m.Order.acquire(m.Name, m, m.mu.Lock)
		return
	}
	m.mu.Lock()
}

// Unlock releases an exclusive hold of m.
func (m *RWMutex) Unlock() {
	if m.Order.Checking() {
		m.Order.release(m.Name, m)
	}
	m.mu.Unlock()
}

// RLock acquires m shared; in check mode it first panics if that would
// invert the order.
func (m *RWMutex) RLock() {
	if m.Order.Checking() {
		m.Order.acquire(m.Name, m, m.mu.RLock)
		return
	}
	m.mu.RLock()
}

// RUnlock releases a shared hold of m.
func (m *RWMutex) RUnlock() {
	if m.Order.Checking() {
		m.Order.release(m.Name, m)
	}
	m.mu.RUnlock()
}

// acquire takes a checked lock: admit, then lock (the mutex's own Lock or
// RLock), then record. Called only from the Lock methods, so the caller
// admit names is three frames up.
func (o *Order) acquire(name string, lock any, take func()) {
	h := o.admit(name, lock)
	take()
	o.record(h)
}

// admit panics if the calling goroutine holds a lock whose level is not
// before m's. It runs before blocking on m, so an inversion that would
// deadlock is reported instead.
func (o *Order) admit(name string, lock any) holder {
	r, ok := o.rank[name]
	if !ok {
		panic(fmt.Sprintf("lockorder: lock %q is not in the documented order %s", name, o))
	}
	_, file, line, _ := runtime.Caller(3) // admit, acquire, Lock, the caller
	at := file + ":" + strconv.Itoa(line)
	id := goid()
	o.mu.Lock()
	held := o.held[id]
	for _, h := range held {
		if h.rank >= r {
			o.mu.Unlock()
			panic(o.violation(name, lock, r, at, h, held))
		}
	}
	o.mu.Unlock()
	return holder{lock: lock, name: name, rank: r, at: at, g: id}
}

// record notes h as held, once its mutex is acquired. Only the goroutine
// itself adds to its record, so nothing changed since admit.
func (o *Order) record(h holder) {
	o.mu.Lock()
	o.held[h.g] = append(o.held[h.g], h)
	o.mu.Unlock()
}

func (o *Order) violation(name string, lock any, r int, at string, h holder, held []holder) string {
	var why string
	switch {
	case h.lock == lock:
		why = "it is already held by this goroutine (self-deadlock)"
	case h.rank == r && r == len(o.levels)-1:
		why = "both are leaves, which never nest"
	case h.rank == r:
		why = "they are peers of one level, never held together"
	default:
		why = fmt.Sprintf("%s comes before %s", name, h.name)
	}
	names := make([]string, len(held))
	for i, x := range held {
		names[i] = x.name + " (" + x.at + ")"
	}
	return fmt.Sprintf("lockorder: acquiring %s at %s while holding %s (taken at %s): %s; documented order: %s; held: %s",
		name, at, h.name, h.at, why, o, strings.Join(names, ", "))
}

// release drops m from the calling goroutine's record, or from another
// goroutine's when m was handed over (locked there, unlocked here).
func (o *Order) release(name string, lock any) {
	id := goid()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.drop(id, lock) {
		return
	}
	for other := range o.held {
		if o.drop(other, lock) {
			return
		}
	}
	panic(fmt.Sprintf("lockorder: unlock of %s, which is not locked", name))
}

func (o *Order) drop(id uint64, lock any) bool {
	held := o.held[id]
	for i := len(held) - 1; i >= 0; i-- {
		if held[i].lock == lock {
			held = append(held[:i:i], held[i+1:]...)
			if len(held) == 0 {
				delete(o.held, id)
			} else {
				o.held[id] = held
			}
			return true
		}
	}
	return false
}

// goid returns the calling goroutine's id, parsed from the first line of
// its stack ("goroutine 42 [running]:"). Check mode only: it is slow.
func goid() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	id, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		panic(fmt.Sprintf("lockorder: cannot parse goroutine id from %q", buf[:]))
	}
	return id
}
