package image

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// PruneResult says what PruneCache removed (or would remove).
type PruneResult struct {
	Blobs int   `json:"blobs"`
	Bytes int64 `json:"bytes"`
	// DryRun is true when nothing was removed.
	DryRun bool `json:"dry_run"`
}

// PruneCache deletes every blob of the OCI blob cache (images never need
// it once built; it only saves downloads) and any partial download left
// by a crash, and reports the bytes freed. With dryRun it only counts. It
// waits for running pulls to finish and holds new ones back meanwhile.
func (s *Store) PruneCache(ctx context.Context, dryRun bool) (PruneResult, error) {
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	res := PruneResult{DryRun: dryRun}
	blobs := filepath.Join(s.cacheDir, "blobs")
	err := filepath.WalkDir(blobs, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		res.Blobs++
		res.Bytes += fi.Size()
		if !dryRun {
			return os.Remove(p)
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("prune blob cache %s: %w", s.cacheDir, err)
	}
	s.log.Info("image: blob cache pruned", "blobs", res.Blobs, "bytes", res.Bytes, "dry_run", dryRun)
	return res, nil
}
