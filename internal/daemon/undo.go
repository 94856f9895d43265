package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
)

// undoStack collects the undo step of each completed stage; on failure
// they run in reverse so a half-made VM leaves nothing behind.
type undoStack struct {
	steps []undoStep
}

type undoStep struct {
	name string
	fn   func(ctx context.Context) error
}

func (u *undoStack) push(name string, fn func(ctx context.Context) error) {
	u.steps = append(u.steps, undoStep{name, fn})
}

// run undoes every step in reverse, on a context that is not cancelled
// (the create's own context may be the reason for the rollback).
func (u *undoStack) run(ctx context.Context, logger *slog.Logger) error {
	ctx = context.WithoutCancel(ctx)
	var errs []error
	for i := len(u.steps) - 1; i >= 0; i-- {
		s := u.steps[i]
		if err := s.fn(ctx); err != nil {
			logger.Warn("rollback step failed", "step", s.name, "err", err)
			errs = append(errs, fmt.Errorf("undo %s: %w", s.name, err))
		}
	}
	u.steps = nil
	return errors.Join(errs...)
}

// release forgets the undo steps: the operation succeeded.
func (u *undoStack) release() { u.steps = nil }
