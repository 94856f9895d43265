// Package follow streams a growing log file to a writer, like `tail -f`:
// what is there (or its last lines), then whatever is appended, until the
// context ends. The daemon uses it for `kiln vm logs -f` on a VM's serial
// console log, which QEMU truncates at each boot and which disappears with
// the VM's directory when the VM is deleted.
//
// It polls (an fstat and a stat per interval, nothing when idle beyond
// that) rather than using inotify: one code path for a file that does not
// exist yet, is truncated, replaced or removed with its directory, and no
// goroutine or descriptor outlives the call.
package follow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"
)

// DefaultInterval is how often Follow looks for new output when
// Options.Interval is zero.
const DefaultInterval = 250 * time.Millisecond

// Options tune Follow.
type Options struct {
	// Tail, when >= 0, starts with only the last Tail lines of what the
	// file holds when Follow opens it first; < 0 copies it all.
	Tail int
	// Interval between looks at the file; DefaultInterval when zero.
	Interval time.Duration
	// Missing is called, at most once per interval, while the file does
	// not exist (not created yet, or removed). A non-nil error ends Follow
	// with that error; the caller decides whether absence is final.
	Missing func(ctx context.Context) error
}

// Follow copies path to w and keeps copying what is appended until ctx
// ends (it then returns ctx.Err()), Missing returns an error, or a read or
// write fails. A file that shrinks was truncated (a new boot): Follow goes
// on from its start. A file replaced under the same name (new inode) or
// removed is drained through the descriptor already open, then reopened
// from its start once it exists again. The file is closed on return.
func Follow(ctx context.Context, path string, w io.Writer, opt Options) error {
	interval := opt.Interval
	if interval <= 0 {
		interval = DefaultInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()

	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	var off int64
	tail := opt.Tail
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if f == nil {
			nf, err := os.Open(path)
			switch {
			case err == nil:
				f, off = nf, 0
				if tail >= 0 {
					if off, err = tailOffsetOf(f, tail); err != nil {
						return err
					}
				}
			case errors.Is(err, fs.ErrNotExist):
				if opt.Missing != nil {
					if err := opt.Missing(ctx); err != nil {
						return err
					}
				}
			default:
				return fmt.Errorf("open %s: %w", path, err)
			}
			tail = -1 // only the first view of the file is tailed
		}
		if f != nil {
			var err error
			if off, err = copyNew(f, off, w); err != nil {
				return err
			}
			reopen, err := replaced(f, path)
			if err != nil {
				return err
			}
			if reopen {
				// Drain what was written before the switch, then start over
				// on whatever has the name now (possibly nothing).
				if _, err := copyNew(f, off, w); err != nil {
					return err
				}
				f.Close()
				f, off = nil, 0
				continue
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// copyNew copies f from off to its current end and returns the new offset.
// A file now shorter than off was truncated: copying restarts at 0.
func copyNew(f *os.File, off int64, w io.Writer) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return off, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	size := fi.Size()
	if size < off {
		off = 0
	}
	if size == off {
		return off, nil
	}
	n, err := io.Copy(w, io.NewSectionReader(f, off, size-off))
	return off + n, err
}

// replaced reports whether path no longer names the open file f: removed,
// or another file (rotation, a new directory) in its place.
func replaced(f *os.File, path string) (bool, error) {
	pi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return !os.SameFile(pi, fi), nil
}

func tailOffsetOf(f *os.File, n int) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	off, err := TailOffset(f, fi.Size(), n)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return off, nil
}

// TailOffset returns the offset in r (of size bytes) at which its last n
// lines start; a final line without a newline counts as a line. It reads
// backwards in blocks, so a large file costs only its tail.
func TailOffset(r io.ReaderAt, size int64, n int) (int64, error) {
	switch {
	case n < 0:
		return 0, nil
	case n == 0:
		return size, nil
	}
	const block = 8 << 10
	buf := make([]byte, block)
	seen := 0
	for end := size; end > 0; {
		start := max(end-block, 0)
		b := buf[:end-start]
		if _, err := r.ReadAt(b, start); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		for i := len(b) - 1; i >= 0; i-- {
			// A newline ending the data closes the last line; it starts none.
			if b[i] != '\n' || start+int64(i) == size-1 {
				continue
			}
			if seen++; seen == n {
				return start + int64(i) + 1, nil
			}
		}
		end = start
	}
	return 0, nil
}
