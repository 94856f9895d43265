package network

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"github.com/kilnvm/kiln/internal/lockorder"
)

// PoolConfig configures a TapPool. Create and Delete are the pool's only
// contact with the host, so the pool's logic is tested without TAPs.
type PoolConfig struct {
	// Size is how many warm TAPs to keep; 0 disables warming (Get creates).
	Size int
	// Parallel bounds concurrent creations during a refill (default 2).
	Parallel int
	Create   func(ctx context.Context) (string, error)
	Delete   func(name string) error
	Logger   *slog.Logger
	// LockOrder, when set, names the pool's lock (LockTapPool) in it.
	LockOrder *lockorder.Order
}

// TapPool keeps warm TAPs so a VM create does not wait for one. Refills run
// in the background, at most one at a time (a refill asked for while one
// runs makes that one go round again), creating up to Parallel TAPs at once.
type TapPool struct {
	cfg    PoolConfig // immutable
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        lockorder.Mutex // leaf lock (LockTapPool); guards the fields below
	ready     []string
	refilling bool
	again     bool
	closed    bool
}

// NewTapPool returns an empty pool; call Refill to warm it.
func NewTapPool(cfg PoolConfig) *TapPool {
	if cfg.Parallel < 1 {
		cfg.Parallel = 2
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &TapPool{cfg: cfg, ctx: ctx, cancel: cancel}
	p.mu.Name, p.mu.Order = LockTapPool, cfg.LockOrder
	return p
}

// Get hands out a warm TAP, or creates one when none is ready, and starts a
// refill. The caller owns the TAP.
func (p *TapPool) Get(ctx context.Context) (string, error) {
	p.mu.Lock()
	if n := len(p.ready); n > 0 {
		name := p.ready[n-1]
		p.ready = p.ready[:n-1]
		p.mu.Unlock()
		p.Refill()
		return name, nil
	}
	p.mu.Unlock()
	p.Refill()
	return p.cfg.Create(ctx)
}

// Warm lists the TAPs ready in the pool.
func (p *TapPool) Warm() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.ready...)
}

// Refill tops the pool up to Size in the background. Calls while a refill
// runs are folded into it.
func (p *TapPool) Refill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.cfg.Size == 0 {
		return
	}
	if p.refilling {
		p.again = true
		return
	}
	p.refilling = true
	p.wg.Add(1)
	go p.refill()
}

func (p *TapPool) refill() {
	defer p.wg.Done()
	for {
		p.mu.Lock()
		need := p.cfg.Size - len(p.ready)
		p.again = false
		p.mu.Unlock()
		var failed bool
		if need > 0 {
			failed = p.createBatch(need)
		}
		p.mu.Lock()
		if !p.again || failed || p.closed {
			p.refilling = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
	}
}

// createBatch creates n TAPs, at most Parallel at a time, and reports
// whether any creation failed (the refill then stops until the next Get).
func (p *TapPool) createBatch(n int) (failed bool) {
	sem := make(chan struct{}, p.cfg.Parallel)
	var wg sync.WaitGroup
	var fmu sync.Mutex
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			name, err := p.cfg.Create(p.ctx)
			if err != nil {
				p.cfg.Logger.Warn("tap pool: create failed", "err", err)
				fmu.Lock()
				failed = true
				fmu.Unlock()
				return
			}
			p.mu.Lock()
			if p.closed {
				p.mu.Unlock()
				_ = p.cfg.Delete(name)
				return
			}
			p.ready = append(p.ready, name)
			p.mu.Unlock()
		}()
	}
	wg.Wait()
	return failed
}

// Close stops refilling and deletes the warm TAPs.
func (p *TapPool) Close() error {
	p.mu.Lock()
	p.closed = true
	names := p.ready
	p.ready = nil
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
	var errs []error
	for _, n := range names {
		errs = append(errs, p.cfg.Delete(n))
	}
	return errors.Join(errs...)
}
