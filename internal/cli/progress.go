package cli

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/api/client"
)

// follow waits for an operation, showing its stages: on a TTY a live line
// for the running stage with its elapsed time and a tick per finished one;
// otherwise one plain line per finished stage. Interrupting cancels the
// operation (which rolls back) before returning.
func (e *env) follow(ctx context.Context, c *client.Client, op api.Operation) (api.Operation, error) {
	tty := e.isTTY() && !e.jsonOut
	var mu sync.Mutex
	printed := 0
	var current *api.Stage
	render := func(final bool) {
		if !tty {
			return
		}
		if current != nil && !final {
			detail := ""
			if current.Detail != "" {
				detail = " " + current.Detail // live progress, e.g. an image pull's layers and bytes
			}
			fmt.Fprintf(e.stderr, "\r\x1b[K  %s %s%s %s", spinner(), current.Name, e.dim(detail), e.dim(fmt.Sprintf("%.1fs", time.Since(current.StartedAt).Seconds())))
		}
	}
	progress := func(op api.Operation) {
		mu.Lock()
		defer mu.Unlock()
		for ; printed < len(op.Stages) && (op.Stages[printed].Done || op.State != api.OpRunning); printed++ {
			s := op.Stages[printed]
			mark := "✓"
			if !s.Done || (op.State == api.OpFailed && printed == len(op.Stages)-1) {
				mark = "✗"
			}
			detail := ""
			if s.Detail != "" {
				detail = " (" + s.Detail + ")"
			}
			if tty {
				fmt.Fprintf(e.stderr, "\r\x1b[K  %s %s%s %s\n", mark, s.Name, e.dim(detail), e.dim(fmtDur(s.Duration)))
			} else if !e.jsonOut {
				fmt.Fprintf(e.stderr, "%s: %s %s in %s\n", op.Kind, s.Name, map[bool]string{true: "done", false: "failed"}[mark == "✓"], fmtDur(s.Duration))
			}
		}
		if printed < len(op.Stages) {
			s := op.Stages[printed]
			if !tty && !e.jsonOut && (current == nil || current.Name != s.Name) {
				detail := ""
				if s.Detail != "" {
					detail = " (" + s.Detail + ")"
				}
				fmt.Fprintf(e.stderr, "%s: %s%s...\n", op.Kind, s.Name, detail)
			}
			current = &s
		} else {
			current = nil
		}
		render(op.State != api.OpRunning)
	}
	done := make(chan struct{})
	if tty {
		go func() {
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					mu.Lock()
					render(false)
					mu.Unlock()
				}
			}
		}()
	}
	final, err := c.Wait(ctx, op, progress)
	close(done)
	if tty {
		mu.Lock()
		fmt.Fprint(e.stderr, "\r\x1b[K")
		mu.Unlock()
	}
	if ctx.Err() != nil && final.State == api.OpRunning {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_ = c.CancelOperation(cctx, op.ID)
		fmt.Fprintln(e.stderr, "interrupted: cancelling and rolling back...")
		final, _ = c.Wait(cctx, final, nil)
		return final, fmt.Errorf("%s interrupted: %w", op.Kind, api.ErrCanceled)
	}
	return final, err
}

const spinFrames = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

func spinner() string {
	frames := []rune(spinFrames)
	return string(frames[(time.Now().UnixMilli()/100)%int64(len(frames))])
}

func fmtDur(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%dms", d.Milliseconds())
	}
	return fmt.Sprintf("%.1fs", d.Seconds())
}
