package image

import (
	"context"
	"fmt"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/lockorder"
)

// flights coalesces concurrent builds of one image name: the first caller
// starts the work in its own goroutine, later callers with the same key
// wait for it, and each caller may stop waiting when its context ends. The
// work's context is cancelled only once no caller is waiting any more.
// The zero value is ready to use.
type flights struct {
	mu lockorder.Mutex // guards m and every flight's waiters and subs; a leaf lock
	m  map[string]*flight
}

type flight struct {
	key    string
	done   chan struct{}
	cancel context.CancelFunc
	img    Image
	err    error

	// Guarded by flights.mu.
	waiters int
	nextSub int
	subs    map[int]func(PullProgress)
	last    PullProgress
}

// do runs work once for name while callers with the same key wait for it.
// progress (may be nil) receives every report of the work, starting with
// the latest one.
func (fs *flights) do(ctx context.Context, name, key string, progress func(PullProgress), work func(ctx context.Context, report func(PullProgress)) (Image, error)) (Image, bool, error) {
	for {
		fs.mu.Lock()
		if fs.m == nil {
			fs.m = map[string]*flight{}
		}
		f, joined := fs.m[name]
		if joined && f.key != key {
			fs.mu.Unlock()
			return Image{}, false, fmt.Errorf("image %q: another pull with a different source or options is in progress: %w", name, api.ErrConflict)
		}
		if joined && f.waiters == 0 {
			// Abandoned by everyone and being cancelled: wait for it to
			// clean up, then start afresh.
			fs.mu.Unlock()
			select {
			case <-f.done:
				continue
			case <-ctx.Done():
				return Image{}, false, fmt.Errorf("pull image %q: %w: %w", name, ctx.Err(), api.ErrCanceled)
			}
		}
		if !joined {
			wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			f = &flight{key: key, done: make(chan struct{}), cancel: cancel, subs: map[int]func(PullProgress){}}
			fs.m[name] = f
			go fs.run(wctx, name, f, work)
		}
		f.waiters++
		id := f.nextSub
		f.nextSub++
		last := f.last
		if progress != nil {
			f.subs[id] = progress
		}
		fs.mu.Unlock()
		if progress != nil && last.Stage != "" {
			progress(last)
		}

		select {
		case <-f.done:
			return f.img, joined, f.err
		case <-ctx.Done():
			fs.mu.Lock()
			delete(f.subs, id)
			f.waiters--
			if f.waiters == 0 {
				f.cancel()
			}
			fs.mu.Unlock()
			return Image{}, joined, fmt.Errorf("pull image %q: %w: %w", name, ctx.Err(), api.ErrCanceled)
		}
	}
}

func (fs *flights) run(ctx context.Context, name string, f *flight, work func(ctx context.Context, report func(PullProgress)) (Image, error)) {
	defer f.cancel()
	// report is called by work's goroutine only, so reports arrive in
	// order; subscribers are called without fs.mu held.
	report := func(p PullProgress) {
		fs.mu.Lock()
		f.last = p
		subs := make([]func(PullProgress), 0, len(f.subs))
		for _, s := range f.subs {
			subs = append(subs, s)
		}
		fs.mu.Unlock()
		for _, s := range subs {
			s(p)
		}
	}
	img, err := work(ctx, report)
	fs.mu.Lock()
	f.img, f.err = img, err
	delete(fs.m, name)
	fs.mu.Unlock()
	close(f.done)
}
