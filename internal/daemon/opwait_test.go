package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/api/client"
	"github.com/kilnvm/kiln/internal/daemon/opstate"
)

// opWaitDaemon is a Daemon with only what GET PathOperation needs; stop
// plays the daemon's shutdown (bgCtx).
func opWaitDaemon(t *testing.T) (*Daemon, context.CancelFunc) {
	t.Helper()
	bg, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	d := &Daemon{ops: opstate.New(time.Now, time.Minute), bgCtx: bg,
		logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	return d, stop
}

// steppedOp begins an operation whose stages the test sends on step; end
// (also run at cleanup) ends the operation with success.
func steppedOp(t *testing.T, d *Daemon) (op *opstate.Op, step chan<- string, end func()) {
	t.Helper()
	steps := make(chan string)
	op = d.ops.Begin(context.Background(), "vm.create", "box", func(ctx context.Context, op *opstate.Op) (any, error) {
		for name := range steps {
			op.Stage(name, "")
		}
		return "ok", nil
	})
	var once sync.Once
	end = func() { once.Do(func() { close(steps) }) }
	t.Cleanup(func() { end(); <-op.Done() })
	return op, steps, end
}

type opReply struct {
	code int
	op   api.Operation
	err  *api.Error
}

// getOp serves one GET PathOperation in a goroutine and delivers its reply.
func getOp(ctx context.Context, d *Daemon, id, query string) <-chan opReply {
	out := make(chan opReply, 1)
	req := httptest.NewRequest(http.MethodGet, "/v1/operations/"+id+query, nil).WithContext(ctx)
	go func() {
		rec := httptest.NewRecorder()
		d.handler().ServeHTTP(rec, req)
		rep := opReply{code: rec.Code}
		if rec.Code == http.StatusOK {
			_ = json.Unmarshal(rec.Body.Bytes(), &rep.op)
		} else {
			var body struct{ Error *api.Error }
			_ = json.Unmarshal(rec.Body.Bytes(), &body)
			rep.err = body.Error
		}
		out <- rep
	}()
	return out
}

func recvReply(t *testing.T, ch <-chan opReply) opReply {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("GET operation did not answer")
		return opReply{}
	}
}

func TestOpWaitBadQuery(t *testing.T) {
	d, _ := opWaitDaemon(t)
	op, _, _ := steppedOp(t, d)
	for _, q := range []string{
		"?wait=5s", "?after=1", "?wait=abc&after=0", "?wait=-1s&after=0", "?wait=0s&after=0",
		"?wait=31s&after=0", "?wait=1h&after=0", "?wait=1s&after=-1", "?wait=1s&after=x",
	} {
		rep := recvReply(t, getOp(context.Background(), d, op.ID(), q))
		if rep.code != http.StatusBadRequest || rep.err == nil || rep.err.Class != api.ClassBadRequest {
			t.Errorf("%s: code %d err %+v, want bad_request", q, rep.code, rep.err)
		}
	}
	rep := recvReply(t, getOp(context.Background(), d, "nope", "?wait=1s&after=0"))
	if rep.code != http.StatusNotFound {
		t.Errorf("unknown op: code %d err %+v", rep.code, rep.err)
	}
	// Without the parameters the request answers at once, as before.
	if rep := recvReply(t, getOp(context.Background(), d, op.ID(), "")); rep.code != http.StatusOK || rep.op.State != api.OpRunning {
		t.Errorf("plain GET: %+v", rep)
	}
}

func TestOpWaitAnswersOnChange(t *testing.T) {
	d, _ := opWaitDaemon(t)
	op, step, end := steppedOp(t, d)
	v := op.Version()
	// 30 s is far beyond the reply deadline below: the answer can only come
	// from the change.
	held := getOp(context.Background(), d, op.ID(), "?wait=30s&after="+itoa(v))
	select {
	case rep := <-held:
		t.Fatalf("answered before any change: %+v", rep)
	default:
	}
	step <- "disk"
	rep := recvReply(t, held)
	if rep.code != http.StatusOK || rep.op.Version <= v || len(rep.op.Stages) != 1 || rep.op.Stages[0].Name != "disk" {
		t.Fatalf("reply: %+v", rep)
	}
	// The end is a change too.
	held = getOp(context.Background(), d, op.ID(), "?wait=30s&after="+itoa(rep.op.Version))
	end()
	rep = recvReply(t, held)
	if rep.op.State != api.OpSucceeded || rep.op.Result != "ok" {
		t.Fatalf("end reply: %+v", rep)
	}
	// An ended operation answers at once whatever the version.
	rep = recvReply(t, getOp(context.Background(), d, op.ID(), "?wait=30s&after="+itoa(rep.op.Version)))
	if rep.code != http.StatusOK || rep.op.State != api.OpSucceeded {
		t.Fatalf("ended op: %+v", rep)
	}
}

func TestOpWaitTimesOutUnchanged(t *testing.T) {
	d, _ := opWaitDaemon(t)
	op, _, _ := steppedOp(t, d)
	v := op.Version()
	rep := recvReply(t, getOp(context.Background(), d, op.ID(), "?wait=30ms&after="+itoa(v)))
	if rep.code != http.StatusOK || rep.op.Version != v || rep.op.State != api.OpRunning {
		t.Fatalf("timeout reply: %+v (version was %d)", rep, v)
	}
}

func TestOpWaitEndsOnClientCancelAndShutdown(t *testing.T) {
	d, stop := opWaitDaemon(t)
	op, _, _ := steppedOp(t, d)
	v := op.Version()

	ctx, cancel := context.WithCancel(context.Background())
	held := getOp(ctx, d, op.ID(), "?wait=30s&after="+itoa(v))
	cancel()
	recvReply(t, held) // the handler returned: the client going away ended the wait

	held = getOp(context.Background(), d, op.ID(), "?wait=30s&after="+itoa(v))
	stop()
	if rep := recvReply(t, held); rep.code != http.StatusOK || rep.op.Version != v {
		t.Fatalf("reply at shutdown: %+v", rep)
	}
}

// TestClientWaitFollowsStages runs the typed client's Wait against the
// handler on a Unix socket: every stage reaches progress, and the final
// operation arrives once the body returns.
func TestClientWaitFollowsStages(t *testing.T) {
	d, _ := opWaitDaemon(t)
	op, step, end := steppedOp(t, d)
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(d.handler())
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	c := client.New(l.Addr().String())

	seen := make(chan string, 8)
	type result struct {
		op  api.Operation
		err error
	}
	done := make(chan result, 1)
	go func() {
		last := ""
		fin, err := c.Wait(context.Background(), op.Snapshot(), func(o api.Operation) {
			if n := len(o.Stages); n > 0 && o.Stages[n-1].Name != last {
				last = o.Stages[n-1].Name
				seen <- last
			}
		})
		done <- result{fin, err}
	}()
	for _, name := range []string{"disk", "boot"} {
		step <- name
		select {
		case got := <-seen:
			if got != name {
				t.Fatalf("progress saw %q, want %q", got, name)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("progress never saw stage %q", name)
		}
	}
	end()
	select {
	case r := <-done:
		if r.err != nil || r.op.State != api.OpSucceeded {
			t.Fatalf("Wait: %+v, %v", r.op, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after the operation ended")
	}

	// A cancelled caller ends Wait with its context's error.
	op2, _, _ := steppedOp(t, d)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := c.Wait(ctx, op2.Snapshot(), nil); errc <- err }()
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait ignored its context")
	}
}

func itoa(v uint64) string { b, _ := json.Marshal(v); return string(b) }
