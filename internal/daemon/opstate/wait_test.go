package opstate

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"
)

// stepper is an operation body driven by the test: each value sent on
// step becomes a stage, a closed step ends the operation.
func stepper(r *Registry) (*Op, chan string) {
	step := make(chan string)
	op := r.Begin(context.Background(), "vm.create", "box", func(ctx context.Context, op *Op) (any, error) {
		for name := range step {
			op.Stage(name, "")
		}
		return "ok", nil
	})
	return op, step
}

func waitAsync(ctx context.Context, op *Op, after uint64) <-chan error {
	out := make(chan error, 1)
	go func() { out <- op.WaitChange(ctx, after) }()
	return out
}

func recv(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("WaitChange did not return")
		return nil
	}
}

func TestWaitChangeWakesOnStageAndEnd(t *testing.T) {
	r := New(time.Now, time.Minute)
	op, step := stepper(r)
	v0 := op.Version()
	if s := op.Snapshot(); s.Version != v0 {
		t.Fatalf("snapshot version %d, Version() %d", s.Version, v0)
	}
	woke := waitAsync(context.Background(), op, v0)
	select {
	case err := <-woke:
		t.Fatalf("woke before any change: %v", err)
	default:
	}
	step <- "disk" // the body runs Stage before it reads the next step
	if err := recv(t, woke); err != nil {
		t.Fatal(err)
	}
	v1 := op.Version()
	if v1 <= v0 || op.CurrentStage() != "disk" {
		t.Fatalf("after a stage: version %d (was %d), stage %q", v1, v0, op.CurrentStage())
	}
	woke = waitAsync(context.Background(), op, v1)
	close(step)
	if err := recv(t, woke); err != nil {
		t.Fatal(err)
	}
	wait(t, op)
	s := op.Snapshot()
	if s.Version <= v1 || s.State != "succeeded" {
		t.Fatalf("after the end: %+v", s)
	}
	// An ended operation never changes again: waiting on its last version
	// answers at once rather than holding the caller.
	if err := op.WaitChange(context.Background(), s.Version); err != nil {
		t.Fatal(err)
	}
}

func TestWaitChangeStaleVersionAnswersAtOnce(t *testing.T) {
	r := New(time.Now, time.Minute)
	op, step := stepper(r)
	defer close(step)
	step <- "disk"
	if err := op.WaitChange(context.Background(), op.Version()-1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// Even with a done context, a stale version is a change, not an error.
	if err := op.WaitChange(ctx, op.Version()+5); err != nil {
		t.Fatal(err)
	}
}

func TestWaitChangeTimesOutWithoutChange(t *testing.T) {
	r := New(time.Now, time.Minute)
	op, step := stepper(r)
	defer close(step)
	v := op.Version()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := op.WaitChange(ctx, v); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want deadline exceeded, got %v", err)
	}
	if op.Version() != v {
		t.Fatalf("version moved without a change: %d -> %d", v, op.Version())
	}
}

func TestDetailBumpsOnlyOnChange(t *testing.T) {
	r := New(time.Now, time.Minute)
	gate := make(chan struct{})
	done := make(chan struct{})
	op := r.Begin(context.Background(), "image.pull", "x", func(ctx context.Context, op *Op) (any, error) {
		op.Stage("fetch", "0%")
		<-gate
		op.Detail("0%") // unchanged: no wake-up
		op.Detail("50%")
		close(done)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	defer r.Cancel(op.ID())
	for op.CurrentStage() != "fetch" {
		if err := op.WaitChange(context.Background(), op.Version()); err != nil {
			t.Fatal(err)
		}
	}
	v := op.Version()
	close(gate)
	<-done
	if got := op.Version(); got != v+1 {
		t.Fatalf("version %d after one real detail change from %d", got, v)
	}
	if d := op.Snapshot().Stages[0].Detail; d != "50%" {
		t.Fatalf("detail %q", d)
	}
}

// TestWaitChangeNoLeak: many waiters on one operation all return when
// their contexts end or the operation changes, leaving no goroutine.
func TestWaitChangeNoLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	r := New(time.Now, time.Minute)
	op, step := stepper(r)
	v := op.Version()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := 0; i < 40; i++ {
		wctx := context.Background()
		if i%2 == 0 {
			wctx = ctx // half end by cancel, half by the change
		}
		wg.Add(1)
		go func() { defer wg.Done(); errs <- op.WaitChange(wctx, v) }()
	}
	cancel()
	step <- "disk"
	close(step)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
	}
	wait(t, op)
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines: %d, before %d\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}
