// Package opstate is the daemon's registry of asynchronous operations (VM
// create, image build, kernel pull): begin, status, cancel, list, and
// pruning of finished operations. Each operation runs in its own goroutine
// with its own context and reports named stages with their durations.
package opstate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/lockorder"
)

// Func is an operation's body. It reports progress through op.Stage and
// returns a result (sent to clients as JSON) or an error.
type Func func(ctx context.Context, op *Op) (any, error)

// Op is one operation. Its methods are safe for concurrent use.
type Op struct {
	// Immutable after Begin.
	id, kind, target string
	created          time.Time
	cancel           context.CancelFunc
	done             chan struct{}
	now              func() time.Time

	mu      lockorder.Mutex // guards the fields below; a leaf lock (LockOp)
	version uint64          // grows on each change (see bumpLocked)
	changed chan struct{}   // closed and replaced on each change
	state   string
	stages  []api.Stage
	err     error
	result  any
	ended   time.Time
}

// ID is the operation id.
func (o *Op) ID() string { return o.id }

// Done is closed when the operation has ended.
func (o *Op) Done() <-chan struct{} { return o.done }

// Stage ends the current stage and starts a new one.
func (o *Op) Stage(name, detail string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.now()
	o.endStageLocked(now)
	o.stages = append(o.stages, api.Stage{Name: name, Detail: detail, StartedAt: now})
	o.bumpLocked()
}

// Detail updates the detail text of the current stage (e.g. progress).
func (o *Op) Detail(detail string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if n := len(o.stages); n > 0 && o.stages[n-1].Detail != detail {
		o.stages[n-1].Detail = detail
		o.bumpLocked()
	}
}

// bumpLocked records a change: it wakes every WaitChange. Closing a
// channel never blocks, so this is safe under o.mu.
func (o *Op) bumpLocked() {
	o.version++
	close(o.changed)
	o.changed = make(chan struct{})
}

// Version is the operation's change counter (also in Snapshot).
func (o *Op) Version() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.version
}

// WaitChange blocks until the operation's version differs from after, the
// operation has ended, or ctx is done (then it returns ctx's error). It
// holds no lock while it waits.
func (o *Op) WaitChange(ctx context.Context, after uint64) error {
	o.mu.Lock()
	v, ch := o.version, o.changed
	o.mu.Unlock()
	if v != after {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-o.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// CurrentStage is the name of the stage running now, or "".
func (o *Op) CurrentStage() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if n := len(o.stages); n > 0 && !o.stages[n-1].Done {
		return o.stages[n-1].Name
	}
	return ""
}

func (o *Op) endStageLocked(now time.Time) {
	if n := len(o.stages); n > 0 && !o.stages[n-1].Done {
		o.stages[n-1].Done = true
		o.stages[n-1].Duration = now.Sub(o.stages[n-1].StartedAt)
	}
}

// Err is the operation's error once it has ended.
func (o *Op) Err() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.err
}

// Snapshot is the operation as the API reports it.
func (o *Op) Snapshot() api.Operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := api.Operation{ID: o.id, Kind: o.kind, Target: o.target, State: o.state,
		Stages: append([]api.Stage(nil), o.stages...), Result: o.result, CreatedAt: o.created,
		Version: o.version}
	if !o.ended.IsZero() {
		e := o.ended
		s.EndedAt = &e
	}
	if o.err != nil {
		s.Error = ToAPIError(o.err, o.id, "")
		if n := len(o.stages); n > 0 && s.Error.Stage == "" {
			s.Error.Stage = o.stages[n-1].Name
		}
	}
	return s
}

// ToAPIError turns an error into its wire form with class and hint.
func ToAPIError(err error, opID, stage string) *api.Error {
	var ae *api.Error
	if errors.As(err, &ae) {
		c := *ae
		if c.OpID == "" {
			c.OpID = opID
		}
		return &c
	}
	return &api.Error{Class: api.ClassOf(err), Message: err.Error(), OpID: opID, Stage: stage, Hint: api.HintOf(err)}
}

// Registry holds operations. The zero value is not usable; use New.
type Registry struct {
	now func() time.Time
	ttl time.Duration

	order *lockorder.Order // of every Op.mu; nil: unchecked (see NewChecked)

	mu  lockorder.Mutex // guards ops; before Op.mu (LockRegistry)
	ops map[string]*Op
}

// New makes a registry that keeps finished operations for ttl.
func New(now func() time.Time, ttl time.Duration) *Registry {
	return &Registry{now: now, ttl: ttl, ops: map[string]*Op{}}
}

// NewID returns a random operation id.
func NewID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Begin starts fn in a new goroutine and returns its operation at once.
// The operation's context is derived from parent without its cancellation
// (an operation outlives the request that began it) but keeps its values.
func (r *Registry) Begin(parent context.Context, kind, target string, fn Func) *Op {
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	op := &Op{id: NewID(), kind: kind, target: target, created: r.now(), cancel: cancel,
		done: make(chan struct{}), now: r.now, state: api.OpRunning, changed: make(chan struct{})}
	op.mu.Name, op.mu.Order = LockOp, r.order
	r.mu.Lock()
	r.ops[op.id] = op
	r.mu.Unlock()
	go func() {
		defer cancel()
		defer close(op.done)
		res, err := fn(ctx, op)
		op.mu.Lock()
		defer op.mu.Unlock()
		op.ended = r.now()
		op.endStageLocked(op.ended)
		switch {
		case err == nil:
			op.state, op.result = api.OpSucceeded, res
		case ctx.Err() != nil && errors.Is(err, context.Canceled):
			op.state, op.err = api.OpCanceled, fmt.Errorf("%s canceled: %w", kind, api.ErrCanceled)
		default:
			op.state, op.err = api.OpFailed, err
		}
		op.bumpLocked()
	}()
	return op
}

// Get returns an operation by id.
func (r *Registry) Get(id string) (*Op, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	op, ok := r.ops[id]
	if !ok {
		return nil, fmt.Errorf("operation %q: %w", id, api.ErrNotFound)
	}
	return op, nil
}

// Cancel asks a running operation to stop; its body sees ctx cancelled and
// rolls back. Cancelling an ended operation is a conflict.
func (r *Registry) Cancel(id string) error {
	op, err := r.Get(id)
	if err != nil {
		return err
	}
	select {
	case <-op.done:
		return fmt.Errorf("operation %s has already ended: %w", id, api.ErrConflict)
	default:
	}
	op.cancel()
	return nil
}

// List returns every operation, oldest first.
func (r *Registry) List() []api.Operation {
	r.mu.Lock()
	ops := make([]*Op, 0, len(r.ops))
	for _, op := range r.ops {
		ops = append(ops, op)
	}
	r.mu.Unlock()
	out := make([]api.Operation, 0, len(ops))
	for _, op := range ops {
		out = append(out, op.Snapshot())
	}
	for i := 1; i < len(out); i++ { // small n: insertion sort by creation time
		for j := i; j > 0 && out[j].CreatedAt.Before(out[j-1].CreatedAt); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// Running reports how many operations have not ended.
func (r *Registry) Running() int {
	n := 0
	for _, op := range r.List() {
		if op.State == api.OpRunning {
			n++
		}
	}
	return n
}

// Prune forgets operations that ended more than ttl ago and returns how
// many it removed.
func (r *Registry) Prune() int {
	cutoff := r.now().Add(-r.ttl)
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for id, op := range r.ops {
		op.mu.Lock()
		old := !op.ended.IsZero() && op.ended.Before(cutoff)
		op.mu.Unlock()
		if old {
			delete(r.ops, id)
			n++
		}
	}
	return n
}

// CancelAll cancels every running operation and waits for them to end or
// for ctx to expire (daemon shutdown).
func (r *Registry) CancelAll(ctx context.Context) {
	r.mu.Lock()
	ops := make([]*Op, 0, len(r.ops))
	for _, op := range r.ops {
		ops = append(ops, op)
	}
	r.mu.Unlock()
	for _, op := range ops {
		op.cancel()
	}
	for _, op := range ops {
		select {
		case <-op.done:
		case <-ctx.Done():
			return
		}
	}
}
