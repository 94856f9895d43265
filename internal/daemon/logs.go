package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/daemon/opstate"
	"github.com/kilnvm/kiln/internal/follow"
	"github.com/kilnvm/kiln/internal/paths"
)

// handleVMLogs answers GET PathVMLogs: the VM's serial console log, its
// last lines (tail=N), or with follow=1 a stream of it that lasts until the
// client goes away, the VM is deleted or the daemon stops. Following
// survives stop/start: a new boot truncates the log (QEMU) or appends to
// it (Firecracker), and the stream goes on with the new boot's output.
func (d *Daemon) handleVMLogs(w http.ResponseWriter, r *http.Request) error {
	v, err := d.store.GetVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	opts, err := parseLogsOptions(r.URL.Query())
	if err != nil {
		return err
	}
	path := filepath.Join(d.layout.VMDir(v.ID), paths.VMSerialLog)
	if !opts.Follow {
		return copyLog(w, path, opts.Tail)
	}
	missing := func(ctx context.Context) error {
		if _, err := d.store.GetVM(ctx, v.ID); errors.Is(err, api.ErrNotFound) {
			return api.Errorf(api.ErrNotFound, "vm %q was deleted", v.Name)
		} else if err != nil {
			return fmt.Errorf("follow the logs of vm %q: %w", v.Name, err)
		}
		return nil // not booted yet, or between a stop and a start
	}
	streamLog(w, r, d.bgCtx, path, follow.Options{Tail: opts.Tail, Missing: missing}, d.log(r.Context()))
	return nil
}

func parseLogsOptions(q url.Values) (api.LogsOptions, error) {
	opts := api.LogsOptions{Tail: -1}
	switch f := q.Get(api.QueryLogsFollow); f {
	case "", "0", "false":
	case "1", "true":
		opts.Follow = true
	default:
		return opts, api.Errorf(api.ErrBadRequest, "%s=%q: want 1 or 0", api.QueryLogsFollow, f)
	}
	if t := q.Get(api.QueryLogsTail); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 {
			return opts, api.Errorf(api.ErrBadRequest, "%s=%q: want a number of lines >= 0", api.QueryLogsTail, t)
		}
		opts.Tail = n
	}
	return opts, nil
}

// copyLog writes the log (or its last tail lines) once; a VM that never
// booted has an empty log.
func copyLog(w http.ResponseWriter, path string, tail int) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		w.WriteHeader(http.StatusOK)
		return nil
	}
	if err != nil {
		return fmt.Errorf("open console log: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat console log: %w", err)
	}
	off, err := follow.TailOffset(f, fi.Size(), tail)
	if err != nil {
		return fmt.Errorf("read console log: %w", err)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, err = io.Copy(w, io.NewSectionReader(f, off, fi.Size()-off))
	return err
}

// streamLog follows path into a chunked 200 response, flushing each
// write. It returns when the client goes away (the request's context),
// stop ends (the daemon is shutting down; nil means never) or opt.Missing
// gives up; an error after the status line travels in the TrailerError
// trailer. Follow runs on this goroutine and closes the file, so nothing
// outlives the request.
func streamLog(w http.ResponseWriter, r *http.Request, stop context.Context, path string, opt follow.Options, log *slog.Logger) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	if stop != nil {
		defer context.AfterFunc(stop, cancel)()
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Trailer", api.TrailerError)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_ = rc.Flush() // the client learns at once that the VM exists

	err := follow.Follow(ctx, path, flushWriter{w, rc}, opt)
	switch {
	case r.Context().Err() != nil:
		log.Debug("log follower left")
		return
	case stop != nil && stop.Err() != nil:
		err = api.Errorf(api.ErrUnavailable, "the kiln daemon is shutting down")
	}
	ae := opstate.ToAPIError(err, opID(r.Context()), "")
	b, _ := json.Marshal(ae)
	w.Header().Set(api.TrailerError, string(b))
	log.Info("log stream ended", "err", err)
}

// flushWriter sends every write to the client at once.
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err != nil {
		return n, err
	}
	return n, f.rc.Flush()
}
