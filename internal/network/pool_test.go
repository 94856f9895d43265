package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/api"
)

// fakeTAPs stands in for the host in pool tests: it counts creations and
// the peak of concurrent ones, and can block creations until released.
type fakeTAPs struct {
	mu              sync.Mutex
	created, active int
	peak            int
	deleted         []string
	gate            chan struct{}
	fail            atomic.Bool
}

func (f *fakeTAPs) create(ctx context.Context) (string, error) {
	f.mu.Lock()
	f.active++
	f.peak = max(f.peak, f.active)
	f.created++
	n := f.created
	f.mu.Unlock()
	if f.gate != nil {
		<-f.gate
	}
	f.mu.Lock()
	f.active--
	f.mu.Unlock()
	if f.fail.Load() {
		return "", errors.New("no TAP for you")
	}
	return fmt.Sprintf("kt%d", n), nil
}

func (f *fakeTAPs) delete(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted = append(f.deleted, name)
	return nil
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestTapPoolRefillIsBoundedAndDeduplicated(t *testing.T) {
	f := &fakeTAPs{gate: make(chan struct{})}
	p := NewTapPool(PoolConfig{Size: 6, Parallel: 2, Create: f.create, Delete: f.delete})
	for i := 0; i < 20; i++ { // many triggers while the first refill runs
		p.Refill()
	}
	go func() {
		for i := 0; i < 6; i++ {
			f.gate <- struct{}{}
		}
	}()
	waitFor(t, "6 warm TAPs", func() bool { return len(p.Warm()) == 6 })
	p.Refill()
	waitFor(t, "the refill to end", func() bool { p.mu.Lock(); defer p.mu.Unlock(); return !p.refilling })
	f.mu.Lock()
	created, peak := f.created, f.peak
	f.mu.Unlock()
	if created != 6 {
		t.Fatalf("created %d TAPs for a pool of 6 (refills not de-duplicated)", created)
	}
	if peak > 2 {
		t.Fatalf("%d creations ran at once, bound is 2", peak)
	}
	// Taking one refills exactly one.
	name, err := p.Get(context.Background())
	if err != nil || name == "" {
		t.Fatalf("get: %q, %v", name, err)
	}
	f.gate <- struct{}{}
	waitFor(t, "the pool topped up", func() bool { return len(p.Warm()) == 6 })
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.deleted) != 6 {
		t.Fatalf("close deleted %v, want the 6 warm TAPs", f.deleted)
	}
	for _, d := range f.deleted {
		if d == name {
			t.Fatalf("close deleted %s, which a VM holds", name)
		}
	}
}

func TestTapPoolEmptyOrFailingCreatesOnDemand(t *testing.T) {
	f := &fakeTAPs{}
	f.fail.Store(true)
	p := NewTapPool(PoolConfig{Size: 3, Create: f.create, Delete: f.delete})
	defer p.Close()
	p.Refill()
	if _, err := p.Get(context.Background()); err == nil {
		t.Fatal("get with a failing host succeeded")
	}
	f.fail.Store(false)
	name, err := p.Get(context.Background())
	if err != nil || name == "" {
		t.Fatalf("get after the host recovered: %q, %v", name, err)
	}
	waitFor(t, "refill after recovery", func() bool { return len(p.Warm()) == 3 })
}

func TestCheckSubnet(t *testing.T) {
	sub := netip.MustParsePrefix("10.231.0.0/24")
	for _, tc := range []struct {
		name   string
		routes []Route
		ok     bool
	}{
		{"empty", nil, true},
		{"disjoint", []Route{{netip.MustParsePrefix("192.168.1.0/24"), "eth0"}}, true},
		{"own bridge", []Route{{sub, "kiln0"}}, true},
		{"default route", []Route{{netip.MustParsePrefix("0.0.0.0/0"), "eth0"}}, true},
		{"same subnet elsewhere", []Route{{sub, "eth0"}}, false},
		{"wider route", []Route{{netip.MustParsePrefix("10.0.0.0/8"), "wg0"}}, false},
		{"narrower route", []Route{{netip.MustParsePrefix("10.231.0.128/25"), "docker0"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckSubnet(tc.routes, sub, "kiln0")
			if tc.ok && err != nil {
				t.Fatal(err)
			}
			if !tc.ok && !errors.Is(err, api.ErrConflict) {
				t.Fatalf("got %v, want conflict", err)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{Bridge: "kiln0", Subnet: netip.MustParsePrefix("10.231.0.0/24"), Zone: "vm", NATTable: "kiln", TapPrefix: "kt"}
	if err := good.validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Config){
		"ipv6":        func(c *Config) { c.Subnet = netip.MustParsePrefix("fd00::/64") },
		"host bits":   func(c *Config) { c.Subnet = netip.MustParsePrefix("10.231.0.1/24") },
		"too small":   func(c *Config) { c.Subnet = netip.MustParsePrefix("10.231.0.0/30") },
		"bridge name": func(c *Config) { c.Bridge = "a-name-far-too-long" },
		"tap prefix":  func(c *Config) { c.TapPrefix = "kt,x" },
		"zone":        func(c *Config) { c.Zone = "a.b" },
	} {
		c := good
		mut(&c)
		if err := c.validate(); !errors.Is(err, api.ErrBadRequest) {
			t.Errorf("%s: got %v, want bad_request", name, err)
		}
	}
}

func TestMACAndAddresses(t *testing.T) {
	if MAC("abc") != MAC("abc") || MAC("abc") == MAC("abd") {
		t.Fatal("MAC is not a stable function of the vm id")
	}
	if m := MAC("0123456789"); len(m) != 17 || m[:9] != "52:54:00:" {
		t.Fatalf("MAC %q", m)
	}
	p := netip.MustParsePrefix("10.231.0.0/23")
	if lo, hi := hostRange(p); lo != 2 || hi != 510 {
		t.Fatalf("host range %d-%d", lo, hi)
	}
	if a := hostAddr(p, 300); a != netip.MustParseAddr("10.231.1.44") {
		t.Fatalf("host 300 = %v", a)
	}
}

func TestUpstreamFromResolvConf(t *testing.T) {
	got := UpstreamFromResolvConf("# x\nnameserver 192.0.2.53\nnameserver ::1\nsearch example\nnameserver 127.0.0.53\n")
	if len(got) != 2 || got[0] != "192.0.2.53:53" || got[1] != "127.0.0.53:53" {
		t.Fatalf("got %v", got)
	}
}
