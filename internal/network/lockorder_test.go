package network

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/lockorder"
)

// TestTapPoolCheckedLeaf runs the pool with its lock checked as a leaf
// under an outer lock (as under a VM lock in the daemon): refill, get and
// close pass, and taking another leaf while the pool's lock is held panics.
func TestTapPoolCheckedLeaf(t *testing.T) {
	o := lockorder.New(true, lockorder.Level{"outer"}, lockorder.Level{LockTapPool, LockNAT, LockDNSServer})
	f := &fakeTAPs{}
	p := NewTapPool(PoolConfig{Size: 2, Create: f.create, Delete: f.delete, LockOrder: o})
	if p.mu.Name != LockTapPool || p.mu.Order != o {
		t.Fatalf("pool lock is %q in %v", p.mu.Name, p.mu.Order)
	}
	outer := &lockorder.Mutex{Name: "outer", Order: o}
	outer.Lock()
	p.Refill()
	waitFor(t, "2 warm TAPs", func() bool { return len(p.Warm()) == 2 })
	if name, err := p.Get(context.Background()); err != nil || name == "" {
		t.Fatalf("get: %q, %v", name, err)
	}
	outer.Unlock()
	waitFor(t, "the pool topped up", func() bool { return len(p.Warm()) == 2 })
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	dns := &lockorder.RWMutex{Name: LockDNSServer, Order: o}
	p.mu.Lock()
	msg := func() (msg string) {
		defer func() { msg = fmt.Sprint(recover()) }()
		dns.RLock()
		dns.RUnlock()
		return ""
	}()
	p.mu.Unlock()
	if !strings.Contains(msg, "both are leaves") {
		t.Fatalf("DNS lock under the pool's: panic %q", msg)
	}
}
