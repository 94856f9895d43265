package daemon

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/daemon/opstate"
)

// opWait is a parsed long-poll query of GET PathOperation (api.QueryOpWait).
type opWait struct {
	wait  time.Duration // 0: answer at once
	after uint64
}

func parseOpWait(q url.Values) (opWait, error) {
	var w opWait
	ws, as := q.Get(api.QueryOpWait), q.Get(api.QueryOpAfter)
	if ws == "" && as == "" {
		return w, nil
	}
	if ws == "" || as == "" {
		return w, api.Errorf(api.ErrBadRequest, "%s and %s go together", api.QueryOpWait, api.QueryOpAfter)
	}
	d, err := time.ParseDuration(ws)
	if err != nil || d <= 0 || d > api.MaxOpWait {
		return w, api.Errorf(api.ErrBadRequest, "%s=%q: want a duration in (0, %s]", api.QueryOpWait, ws, api.MaxOpWait)
	}
	v, err := strconv.ParseUint(as, 10, 64)
	if err != nil {
		return w, api.Errorf(api.ErrBadRequest, "%s=%q: want an operation version (a number)", api.QueryOpAfter, as)
	}
	return opWait{wait: d, after: v}, nil
}

// waitOp holds a long-poll until op changes past w.after, w.wait passes,
// the client goes away or the daemon stops (d.bgCtx). A timeout is not an
// error: the caller answers with the unchanged operation.
func (d *Daemon) waitOp(r *http.Request, op *opstate.Op, w opWait) {
	if w.wait <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), w.wait)
	defer cancel()
	if d.bgCtx != nil {
		stop := context.AfterFunc(d.bgCtx, cancel)
		defer stop()
	}
	_ = op.WaitChange(ctx, w.after)
}
