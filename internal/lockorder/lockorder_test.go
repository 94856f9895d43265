package lockorder

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// testOrder mirrors the daemon's shape: a per-object lock, two peers, leaves.
func testOrder(check bool) *Order {
	return New(check, Level{"vm"}, Level{"create", "image"}, Level{"leafA", "leafB"})
}

// mustPanic runs f and returns its panic message, failing if it does not panic.
func mustPanic(t *testing.T, f func()) (msg string) {
	t.Helper()
	defer func() {
		r := recover()
		if r == nil {
			t.Fatal("no panic")
		}
		msg = fmt.Sprint(r)
	}()
	f()
	return ""
}

func TestOrderedAcquisitionPasses(t *testing.T) {
	o := testOrder(true)
	vm, img, leaf := &Mutex{Name: "vm", Order: o}, &Mutex{Name: "image", Order: o}, &Mutex{Name: "leafA", Order: o}
	vm.Lock()
	img.Lock()
	leaf.Lock()
	if got, want := strings.Join(o.Held(), ","), "vm,image,leafA"; got != want {
		t.Fatalf("held %q, want %q", got, want)
	}
	leaf.Unlock()
	img.Unlock()
	vm.Unlock()
	if h := o.Held(); len(h) != 0 {
		t.Fatalf("held after unlocking all: %v", h)
	}
	// Skipping levels is fine: vm → leaf, and a leaf alone.
	vm.Lock()
	leaf.Lock()
	leaf.Unlock()
	vm.Unlock()
}

func TestViolationsPanicWithBothNamesAndTheOrder(t *testing.T) {
	for _, tc := range []struct {
		name        string
		first, then string
		why         string
	}{
		{"inversion", "image", "vm", "vm comes before image"},
		{"peers", "create", "image", "peers of one level"},
		{"leaf nesting", "leafA", "leafB", "both are leaves"},
		{"leaf then outer lock", "leafB", "create", "create comes before leafB"},
		{"two locks of one kind", "vm", "vm", "peers of one level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := testOrder(true)
			a, b := &Mutex{Name: tc.first, Order: o}, &Mutex{Name: tc.then, Order: o}
			a.Lock()
			defer a.Unlock()
			msg := mustPanic(t, b.Lock)
			for _, want := range []string{"acquiring " + tc.then, "while holding " + tc.first, tc.why,
				"documented order: vm → {create, image} → {leafA, leafB}", "lockorder_test.go:"} {
				if !strings.Contains(msg, want) {
					t.Errorf("panic %q lacks %q", msg, want)
				}
			}
			// The refused lock was neither taken nor recorded.
			if got := strings.Join(o.Held(), ","); got != tc.first {
				t.Errorf("held %q after the refused lock, want %q", got, tc.first)
			}
			if !b.mu.TryLock() {
				t.Error("refused mutex is locked")
			} else {
				b.mu.Unlock()
			}
		})
	}
}

func TestRelockSameMutexPanicsInsteadOfDeadlocking(t *testing.T) {
	o := testOrder(true)
	m := &Mutex{Name: "vm", Order: o}
	m.Lock()
	defer m.Unlock()
	if msg := mustPanic(t, m.Lock); !strings.Contains(msg, "already held by this goroutine") {
		t.Fatalf("panic %q", msg)
	}
}

func TestUnknownNamePanics(t *testing.T) {
	m := &Mutex{Name: "nope", Order: testOrder(true)}
	if msg := mustPanic(t, m.Lock); !strings.Contains(msg, `lock "nope" is not in the documented order`) {
		t.Fatalf("panic %q", msg)
	}
}

func TestUnlockOutOfOrderKeepsTheRecordRight(t *testing.T) {
	o := testOrder(true)
	vm, create, leaf := &Mutex{Name: "vm", Order: o}, &Mutex{Name: "create", Order: o}, &Mutex{Name: "leafA", Order: o}
	vm.Lock()
	create.Lock()
	vm.Unlock() // legal: release order does not matter for deadlock
	if got := strings.Join(o.Held(), ","); got != "create" {
		t.Fatalf("held %q, want create", got)
	}
	// Still holding create: vm is now an inversion, a leaf is fine.
	if msg := mustPanic(t, vm.Lock); !strings.Contains(msg, "while holding create") {
		t.Fatalf("panic %q", msg)
	}
	leaf.Lock()
	leaf.Unlock()
	create.Unlock()
	if h := o.Held(); len(h) != 0 {
		t.Fatalf("held %v", h)
	}
	if msg := mustPanic(t, leaf.Unlock); !strings.Contains(msg, "unlock of leafA, which is not locked") {
		t.Fatalf("panic %q", msg)
	}
}

func TestGoroutinesDoNotInterfere(t *testing.T) {
	o := testOrder(true)
	leaf := &Mutex{Name: "leafA", Order: o}
	leaf.Lock() // this goroutine holds a leaf ...
	done := make(chan any)
	go func() {
		defer func() { done <- recover() }()
		// ... while another takes the whole chain: no violation there.
		vm, img, b := &Mutex{Name: "vm", Order: o}, &Mutex{Name: "image", Order: o}, &Mutex{Name: "leafB", Order: o}
		vm.Lock()
		img.Lock()
		b.Lock()
		b.Unlock()
		img.Unlock()
		vm.Unlock()
	}()
	select {
	case r := <-done:
		if r != nil {
			t.Fatalf("other goroutine panicked: %v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("other goroutine did not finish")
	}
	leaf.Unlock()
}

func TestConcurrentCorrectUseUnderContention(t *testing.T) {
	o := testOrder(true)
	vms := []*Mutex{{Name: "vm", Order: o}, {Name: "vm", Order: o}}
	img, leaf := &Mutex{Name: "image", Order: o}, &Mutex{Name: "leafA", Order: o}
	var wg sync.WaitGroup
	var n int
	for g := range 8 {
		wg.Go(func() {
			for range 200 {
				vm := vms[g%2]
				vm.Lock()
				img.Lock()
				leaf.Lock()
				n++
				leaf.Unlock()
				img.Unlock()
				vm.Unlock()
			}
		})
	}
	wg.Wait()
	if n != 8*200 {
		t.Fatalf("n = %d", n)
	}
	if len(o.held) != 0 {
		t.Fatalf("records left: %v", o.held)
	}
}

func TestUnlockByAnotherGoroutine(t *testing.T) {
	o := testOrder(true)
	m := &Mutex{Name: "vm", Order: o}
	m.Lock()
	done := make(chan any)
	go func() {
		defer func() { done <- recover() }()
		m.Unlock() // handed over, as sync.Mutex allows
	}()
	if r := <-done; r != nil {
		t.Fatalf("handover unlock panicked: %v", r)
	}
	if h := o.Held(); len(h) != 0 {
		t.Fatalf("locker still recorded as holding %v", h)
	}
	m.Lock() // not a self-deadlock report: the record moved on
	m.Unlock()
}

func TestCheckingOffIsAPlainMutex(t *testing.T) {
	for _, o := range []*Order{nil, testOrder(false)} {
		leaf, vm := &Mutex{Name: "leafA", Order: o}, &Mutex{Name: "vm", Order: o}
		leaf.Lock()
		vm.Lock() // an inversion, unchecked
		vm.Unlock()
		leaf.Unlock()
		if o.Checking() || o.Held() != nil {
			t.Fatal("unchecked order records locks")
		}
	}
	var zero Mutex
	zero.Lock()
	zero.Unlock()
}

func TestNewRejectsABadOrder(t *testing.T) {
	for name, levels := range map[string][]Level{
		"duplicate":   {{"a"}, {"b", "a"}},
		"empty level": {{"a"}, {}},
		"empty name":  {{"a", ""}},
	} {
		t.Run(name, func(t *testing.T) { mustPanic(t, func() { New(true, levels...) }) })
	}
	o := testOrder(false)
	if r, ok := o.Rank("image"); !ok || r != 1 {
		t.Fatalf("Rank(image) = %d, %v", r, ok)
	}
	if _, ok := o.Rank("x"); ok {
		t.Fatal("Rank(x) found")
	}
}

func BenchmarkUncheckedLockUnlock(b *testing.B) {
	m := &Mutex{Name: "vm", Order: testOrder(false)}
	for b.Loop() {
		m.Lock()
		m.Unlock()
	}
}

// TestRWMutexSharedHoldsAreChecked: a shared hold orders like an
// exclusive one, readers of one RWMutex on different goroutines coexist,
// and a second RLock by the holder panics instead of risking a deadlock.
func TestRWMutexSharedHoldsAreChecked(t *testing.T) {
	o := testOrder(true)
	img, leaf := &RWMutex{Name: "image", Order: o}, &Mutex{Name: "leafA", Order: o}
	img.RLock()
	leaf.Lock() // image → leaf: allowed under a shared hold
	if got, want := strings.Join(o.Held(), ","), "image,leafA"; got != want {
		t.Fatalf("held %q, want %q", got, want)
	}
	leaf.Unlock()

	// Another goroutine may hold it shared at the same time.
	done := make(chan string)
	go func() {
		img.RLock()
		h := strings.Join(o.Held(), ",")
		img.RUnlock()
		done <- h
	}()
	select {
	case h := <-done:
		if h != "image" {
			t.Errorf("other reader's held = %q, want image", h)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a second reader blocked behind the first")
	}

	if msg := mustPanic(t, img.RLock); !strings.Contains(msg, "self-deadlock") {
		t.Errorf("recursive RLock: panic %q, want self-deadlock", msg)
	}
	img.RUnlock()
	if h := o.Held(); len(h) != 0 {
		t.Fatalf("held after RUnlock: %v", h)
	}

	// Exclusive: the order is checked the same way both ways round.
	img.Lock()
	if msg := mustPanic(t, (&Mutex{Name: "vm", Order: o}).Lock); !strings.Contains(msg, "vm comes before image") {
		t.Errorf("vm under image (exclusive): panic %q", msg)
	}
	img.Unlock()
	leaf.Lock()
	if msg := mustPanic(t, img.RLock); !strings.Contains(msg, "acquiring image") || !strings.Contains(msg, "while holding leafA") {
		t.Errorf("RLock under a leaf: panic %q", msg)
	}
	leaf.Unlock()

	// Unchecked zero value works as a plain RWMutex.
	var plain RWMutex
	plain.RLock()
	plain.RLock()
	plain.RUnlock()
	plain.RUnlock()
	plain.Lock()
	plain.Unlock()
}
