package opstate

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/api"
)

// fakeClock is a manually advanced clock (a fake: the real one is time.Now).
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func wait(t *testing.T, op *Op) {
	t.Helper()
	select {
	case <-op.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("operation did not end")
	}
}

func TestStagesAndResult(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	r := New(clk.Now, time.Minute)
	op := r.Begin(context.Background(), "vm.create", "box", func(ctx context.Context, op *Op) (any, error) {
		op.Stage("disk", "")
		clk.Add(2 * time.Second)
		op.Stage("boot", "")
		clk.Add(3 * time.Second)
		return "ok", nil
	})
	wait(t, op)
	s := op.Snapshot()
	if s.State != api.OpSucceeded || s.Result != "ok" {
		t.Fatalf("state %s result %v", s.State, s.Result)
	}
	if len(s.Stages) != 2 || s.Stages[0].Duration != 2*time.Second || s.Stages[1].Duration != 3*time.Second || !s.Stages[1].Done {
		t.Fatalf("stages: %+v", s.Stages)
	}
}

func TestFailureCarriesClassAndStage(t *testing.T) {
	r := New(time.Now, time.Minute)
	op := r.Begin(context.Background(), "vm.create", "box", func(ctx context.Context, op *Op) (any, error) {
		op.Stage("resolve", "")
		return nil, api.Hinted(api.Errorf(api.ErrNotFound, "image %q", "nope"), "kiln image list")
	})
	wait(t, op)
	s := op.Snapshot()
	if s.State != api.OpFailed || s.Error == nil || s.Error.Class != api.ClassNotFound || s.Error.Stage != "resolve" || s.Error.Hint == "" || s.Error.OpID != op.ID() {
		t.Fatalf("snapshot: %+v err %+v", s, s.Error)
	}
}

func TestCancel(t *testing.T) {
	r := New(time.Now, time.Minute)
	started := make(chan struct{})
	op := r.Begin(context.Background(), "vm.create", "box", func(ctx context.Context, op *Op) (any, error) {
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	<-started
	if err := r.Cancel(op.ID()); err != nil {
		t.Fatal(err)
	}
	wait(t, op)
	if s := op.Snapshot(); s.State != api.OpCanceled || s.Error.Class != api.ClassCanceled {
		t.Fatalf("after cancel: %+v", s)
	}
	if err := r.Cancel(op.ID()); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("cancel of ended op: %v", err)
	}
	if err := r.Cancel("nope"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("cancel of unknown op: %v", err)
	}
}

func TestOperationOutlivesRequestContext(t *testing.T) {
	r := New(time.Now, time.Minute)
	reqCtx, cancelReq := context.WithCancel(context.Background())
	release := make(chan struct{})
	op := r.Begin(reqCtx, "vm.create", "box", func(ctx context.Context, op *Op) (any, error) {
		<-release
		return nil, ctx.Err()
	})
	cancelReq()
	close(release)
	wait(t, op)
	if s := op.Snapshot(); s.State != api.OpSucceeded {
		t.Fatalf("request cancel leaked into the operation: %+v", s)
	}
}

func TestPruneKeepsRunningAndRecent(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	r := New(clk.Now, time.Minute)
	done := r.Begin(context.Background(), "a", "x", func(context.Context, *Op) (any, error) { return nil, nil })
	wait(t, done)
	block := make(chan struct{})
	defer close(block)
	running := r.Begin(context.Background(), "b", "y", func(context.Context, *Op) (any, error) { <-block; return nil, nil })
	if n := r.Prune(); n != 0 {
		t.Fatalf("pruned %d fresh ops", n)
	}
	clk.Add(2 * time.Minute)
	if n := r.Prune(); n != 1 {
		t.Fatalf("pruned %d, want 1", n)
	}
	if _, err := r.Get(running.ID()); err != nil {
		t.Fatalf("running op pruned: %v", err)
	}
	if _, err := r.Get(done.ID()); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("old op kept: %v", err)
	}
}
