package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/api/client"
	"github.com/kilnvm/kiln/internal/follow"
	"github.com/kilnvm/kiln/internal/testutil"
)

// logServer serves streamLog on a Unix socket, as the daemon does, and
// reports each handler's return on ended.
type logServer struct {
	path  string // the followed file
	stop  context.CancelFunc
	ended chan struct{}
	c     *client.Client
}

func newLogServer(t *testing.T, missing func(context.Context) error) *logServer {
	t.Helper()
	dir := t.TempDir()
	stopCtx, stop := context.WithCancel(context.Background())
	s := &logServer{path: filepath.Join(dir, "console.log"), stop: stop, ended: make(chan struct{}, 4)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathVMLogs, func(w http.ResponseWriter, r *http.Request) {
		defer func() { s.ended <- struct{}{} }()
		opt := follow.Options{Tail: -1, Interval: 5 * time.Millisecond, Missing: missing}
		streamLog(w, r, stopCtx, s.path, opt, slog.New(slog.NewTextHandler(io.Discard, nil)))
	})
	l, err := net.Listen("unix", filepath.Join(dir, "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener = l
	srv.Start()
	t.Cleanup(func() { stop(); srv.Close() })
	s.c = client.New(l.Addr().String())
	return s
}

func (s *logServer) waitEnded(t *testing.T) {
	t.Helper()
	select {
	case <-s.ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the log handler did not return")
	}
}

// watchBuf is a writer that signals when its content contains a marker.
type watchBuf struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
}

func newWatchBuf(want string) *watchBuf { return &watchBuf{want: want, seen: make(chan struct{})} }

func (b *watchBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	had := strings.Contains(b.buf.String(), b.want)
	b.buf.Write(p)
	if !had && strings.Contains(b.buf.String(), b.want) {
		close(b.seen)
	}
	return len(p), nil
}

func (b *watchBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *watchBuf) wait(t *testing.T) {
	t.Helper()
	select {
	case <-b.seen:
	case <-time.After(5 * time.Second):
		t.Fatalf("never saw %q; got %q", b.want, b.String())
	}
}

// A client that goes away ends the follow: the handler returns and the
// log's descriptor is closed; the client's own cancel is not an error.
func TestStreamLogClientGoneEndsFollow(t *testing.T) {
	s := newLogServer(t, nil)
	testutil.AppendFile(t, s.path, "boot\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := newWatchBuf("MARK-1")
	errc := make(chan error, 1)
	go func() { errc <- s.c.StreamVMLogs(ctx, "box", api.LogsOptions{Follow: true, Tail: -1}, out) }()
	testutil.AppendFile(t, s.path, "MARK-1\n")
	out.wait(t)
	if got := out.String(); got != "boot\nMARK-1\n" {
		t.Errorf("streamed %q", got)
	}
	if n := testutil.OpenFDs(t, s.path); n != 1 {
		t.Errorf("%d descriptors on the log while following, want 1", n)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("StreamVMLogs after the caller's cancel = %v, want nil", err)
	}
	s.waitEnded(t)
	if n := testutil.OpenFDs(t, s.path); n != 0 {
		t.Fatalf("%d descriptors still open on the log after the client left", n)
	}
}

// A deleted VM ends the stream with not_found in the trailer, after the
// log's last lines.
func TestStreamLogVMDeleted(t *testing.T) {
	var mu sync.Mutex
	deleted := false
	s := newLogServer(t, func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if deleted {
			return api.Errorf(api.ErrNotFound, "vm %q was deleted", "box")
		}
		return nil
	})
	testutil.AppendFile(t, s.path, "hello\n")
	out := newWatchBuf("hello")
	errc := make(chan error, 1)
	go func() {
		errc <- s.c.StreamVMLogs(context.Background(), "box", api.LogsOptions{Follow: true, Tail: -1}, out)
	}()
	out.wait(t)
	mu.Lock()
	deleted = true
	mu.Unlock()
	testutil.AppendFile(t, s.path, "bye\n")
	if err := os.Remove(s.path); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-errc:
	case <-time.After(5 * time.Second):
		t.Fatal("the stream did not end when the VM was deleted")
	}
	if !errors.Is(err, api.ErrNotFound) || !strings.Contains(err.Error(), "was deleted") {
		t.Fatalf("StreamVMLogs after delete = %v, want not_found \"was deleted\"", err)
	}
	if got := out.String(); got != "hello\nbye\n" {
		t.Errorf("streamed %q, want the last line drained before the end", got)
	}
	s.waitEnded(t)
}

// A daemon shutting down ends the stream with unavailable, promptly.
func TestStreamLogDaemonStops(t *testing.T) {
	s := newLogServer(t, nil)
	testutil.AppendFile(t, s.path, "up\n")
	out := newWatchBuf("up")
	errc := make(chan error, 1)
	go func() {
		errc <- s.c.StreamVMLogs(context.Background(), "box", api.LogsOptions{Follow: true, Tail: -1}, out)
	}()
	out.wait(t)
	s.stop()
	select {
	case err := <-errc:
		if !errors.Is(err, api.ErrUnavailable) {
			t.Fatalf("StreamVMLogs when the daemon stops = %v, want unavailable", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stream did not end when the daemon stopped")
	}
	s.waitEnded(t)
}

func TestParseLogsOptions(t *testing.T) {
	for _, tc := range []struct {
		query   string
		want    api.LogsOptions
		wantErr bool
	}{
		{"", api.LogsOptions{Tail: -1}, false},
		{"follow=1", api.LogsOptions{Follow: true, Tail: -1}, false},
		{"follow=1&tail=0", api.LogsOptions{Follow: true, Tail: 0}, false},
		{"tail=20", api.LogsOptions{Tail: 20}, false},
		{"follow=yes", api.LogsOptions{}, true},
		{"tail=-2", api.LogsOptions{}, true},
		{"tail=ten", api.LogsOptions{}, true},
	} {
		q, _ := url.ParseQuery(tc.query)
		got, err := parseLogsOptions(q)
		if tc.wantErr {
			if !errors.Is(err, api.ErrBadRequest) {
				t.Errorf("%q: err = %v, want bad_request", tc.query, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q = %+v, %v; want %+v", tc.query, got, err, tc.want)
		}
	}
}
