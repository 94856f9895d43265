package image

import (
	"context"
	"fmt"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// parallelDownloads is how many layers of one pull download at once.
const parallelDownloads = 3

type layerInfo struct {
	layer  v1.Layer
	digest v1.Hash
	size   int64
}

// layerFetch is one layer's way into the blob cache: done is closed when
// the blob is there with its digest checked (err nil) or cannot be.
// fetched says this pull downloads it (rather than finding it cached).
type layerFetch struct {
	done    chan struct{}
	err     error
	fetched bool
}

// downloads brings a pull's layers into the blob cache in the background,
// oldest first, parallelDownloads at a time, each blob once however often
// the image lists it. The first failure cancels the rest.
type downloads struct {
	ctx     context.Context // the pull's
	cancel  context.CancelFunc
	fetches []*layerFetch
	wg      sync.WaitGroup
	mu      *sync.Mutex // the pull's progress lock; guards failed too
	failed  error       // the first download error
}

// startDownloads starts the downloads of the layers not in the cache (or
// not whole there). It counts cached layers into p, which it reads and
// writes under mu; later progress goes through update (which takes mu).
// The caller must call stop.
func startDownloads(ctx context.Context, cache *blobCache, infos []layerInfo, ref string, p *PullProgress, mu *sync.Mutex, update func(func(*PullProgress))) *downloads {
	d := &downloads{ctx: ctx, fetches: make([]*layerFetch, len(infos)), mu: mu}
	var dctx context.Context
	dctx, d.cancel = context.WithCancel(ctx)
	first := map[v1.Hash]*layerFetch{}
	mu.Lock()
	for i, li := range infos {
		if f, ok := first[li.digest]; ok {
			d.fetches[i] = f // the same blob twice: fetched once
			p.BytesDone += li.size
			continue
		}
		f := &layerFetch{done: make(chan struct{})}
		d.fetches[i], first[li.digest] = f, f
		if have, _ := cache.blobSize(li.digest); have == li.size {
			p.CachedLayers++
			p.LayersDone++
			p.BytesDone += li.size
			close(f.done)
			continue
		}
		f.fetched = true
	}
	mu.Unlock()
	// Workers take the layers to download oldest first, the order the
	// extraction needs them in.
	todo := make(chan int, len(infos))
	for i, li := range infos {
		if f := d.fetches[i]; f.fetched && first[li.digest] == f {
			delete(first, li.digest) // each blob once
			todo <- i
		}
	}
	close(todo)
	download := func(i int) {
		li, f := infos[i], d.fetches[i]
		defer close(f.done)
		if err := dctx.Err(); err != nil {
			f.err = err
			return
		}
		err := cache.fetch(dctx, li.digest, li.size, li.layer.Compressed, func(n int64) {
			update(func(p *PullProgress) { p.BytesDone += n })
		})
		if err != nil {
			f.err = fmt.Errorf("download layer %d/%d (%s) of %s: %w", i+1, len(infos), li.digest, ref, err)
			mu.Lock()
			if d.failed == nil && dctx.Err() == nil {
				d.failed = f.err
			}
			mu.Unlock()
			d.cancel() // the pull fails: stop the other downloads
			return
		}
		update(func(p *PullProgress) {
			if p.Stage == "download" {
				p.LayersDone++
			}
		})
	}
	for w := 0; w < min(parallelDownloads, len(todo)); w++ {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			for i := range todo {
				download(i)
			}
		}()
	}
	return d
}

// wait blocks until layer i is in the cache with its digest checked. A
// download cancelled because another failed reports that other's error.
func (d *downloads) wait(i int) error {
	f := d.fetches[i]
	select {
	case <-f.done:
	case <-d.ctx.Done():
		return d.ctx.Err()
	}
	if f.err == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failed != nil && d.ctx.Err() == nil {
		return d.failed
	}
	return f.err
}

// fetched reports whether this pull downloaded layer i (and so checked
// its digest as it wrote it) rather than finding it in the cache.
func (d *downloads) fetched(i int) bool { return d.fetches[i].fetched }

// stop cancels the downloads still running and waits for them to end.
func (d *downloads) stop() {
	d.cancel()
	d.wg.Wait()
}
