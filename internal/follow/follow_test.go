package follow

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/testutil"
)

func TestTailOffset(t *testing.T) {
	var big strings.Builder
	for i := range 5000 {
		fmt.Fprintf(&big, "line %d\n", i) // ~50 KB: several blocks
	}
	for _, tc := range []struct {
		name, data string
		n          int
		want       string
	}{
		{"all", "a\nb\nc\n", -1, "a\nb\nc\n"},
		{"none", "a\nb\nc\n", 0, ""},
		{"last", "a\nb\nc\n", 1, "c\n"},
		{"last two", "a\nb\nc\n", 2, "b\nc\n"},
		{"more than there are", "a\nb\nc\n", 10, "a\nb\nc\n"},
		{"unterminated last line", "a\nb\nc", 1, "c"},
		{"unterminated, two", "a\nb\nc", 2, "b\nc"},
		{"empty", "", 3, ""},
		{"blank lines count", "a\n\n\n", 2, "\n\n"},
		{"across blocks", big.String(), 3, "line 4997\nline 4998\nline 4999\n"},
		{"whole big file", big.String(), 5000, big.String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := strings.NewReader(tc.data)
			off, err := TailOffset(r, int64(len(tc.data)), tc.n)
			if err != nil {
				t.Fatal(err)
			}
			if got := tc.data[off:]; got != tc.want {
				t.Errorf("TailOffset(%d) = %d: %q, want %q", tc.n, off, got, tc.want)
			}
		})
	}
}

// syncBuf is a writer the test reads while Follow writes.
type syncBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// run starts Follow in the background and returns its result channel; the
// test's cleanup cancels it and waits, so no goroutine outlives a test.
func run(t *testing.T, path string, w *syncBuf, opt Options) (cancel func(), done <-chan error) {
	t.Helper()
	if opt.Interval == 0 {
		opt.Interval = 5 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch, finished := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(finished)
		ch <- Follow(ctx, path, w, opt)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-finished:
		case <-time.After(5 * time.Second):
			t.Error("Follow did not return after cancel")
		}
	})
	return cancel, ch
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func wantOutput(t *testing.T, w *syncBuf, want string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("output %q", want), func() bool { return w.String() == want })
}

func waitDone(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Follow did not return")
		return nil
	}
}

func TestFollowAppendsThenCancelClosesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	testutil.AppendFile(t, path, "boot 1\n")
	var w syncBuf
	cancel, done := run(t, path, &w, Options{Tail: -1})
	wantOutput(t, &w, "boot 1\n")
	if n := testutil.OpenFDs(t, path); n != 1 {
		t.Fatalf("%d descriptors open on the log while following, want 1", n)
	}
	testutil.AppendFile(t, path, "more")
	wantOutput(t, &w, "boot 1\nmore")
	testutil.AppendFile(t, path, " output\n")
	wantOutput(t, &w, "boot 1\nmore output\n")
	cancel()
	if err := waitDone(t, done); !errors.Is(err, context.Canceled) {
		t.Fatalf("Follow after cancel = %v, want context.Canceled", err)
	}
	if n := testutil.OpenFDs(t, path); n != 0 {
		t.Fatalf("%d descriptors still open on the log after Follow returned", n)
	}
}

func TestFollowTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	testutil.AppendFile(t, path, "a\nb\nc\n")
	var w syncBuf
	_, _ = run(t, path, &w, Options{Tail: 2})
	wantOutput(t, &w, "b\nc\n")
	testutil.AppendFile(t, path, "d\n")
	wantOutput(t, &w, "b\nc\nd\n")
}

func TestFollowTailZeroShowsOnlyNewOutput(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	testutil.AppendFile(t, path, "old\n")
	var w syncBuf
	_, _ = run(t, path, &w, Options{Tail: 0})
	// Follow may open the file before or after an append: keep appending
	// until output appears; none of it may be the old line.
	waitFor(t, "new output", func() bool {
		testutil.AppendFile(t, path, "new\n")
		return w.String() != ""
	})
	if got := w.String(); !strings.HasPrefix(got, "new\n") || strings.Contains(got, "old") {
		t.Fatalf("output %q, want only lines written after Follow started", got)
	}
}

// A new boot truncates the console log: following goes on from its start.
func TestFollowTruncation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	testutil.AppendFile(t, path, "first boot, a long line\n")
	var w syncBuf
	_, _ = run(t, path, &w, Options{Tail: -1})
	wantOutput(t, &w, "first boot, a long line\n")
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	// Shorter than what was read: seen as a truncation even if Follow
	// never looks at the empty file in between.
	testutil.AppendFile(t, path, "second\n")
	wantOutput(t, &w, "first boot, a long line\nsecond\n")
}

// A file replaced under its name is drained, then the new one is followed.
func TestFollowReplacedFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "console.log")
	testutil.AppendFile(t, path, "old\n")
	var w syncBuf
	_, _ = run(t, path, &w, Options{Tail: -1})
	wantOutput(t, &w, "old\n")
	// Write to the old file and move a new one over it in one step, so the
	// tail of the old file must come from the descriptor Follow holds.
	old, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	next := filepath.Join(dir, "next")
	testutil.AppendFile(t, next, "new\n")
	if _, err := old.WriteString("old tail\n"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, path); err != nil {
		t.Fatal(err)
	}
	wantOutput(t, &w, "old\nold tail\nnew\n")
}

// The file may not exist yet (VM never booted) and may go away (VM
// deleted); Missing decides whether that is the end.
func TestFollowMissing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vm")
	path := filepath.Join(dir, "console.log")
	errGone := errors.New("vm deleted")
	var mu sync.Mutex
	gone, asked := false, 0
	missing := func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		asked++
		if gone {
			return errGone
		}
		return nil
	}
	var w syncBuf
	_, done := run(t, path, &w, Options{Tail: 5, Missing: missing})
	waitFor(t, "Missing to be asked", func() bool { mu.Lock(); defer mu.Unlock(); return asked > 0 })
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	testutil.AppendFile(t, path, "hello\n")
	wantOutput(t, &w, "hello\n")

	mu.Lock()
	gone = true
	mu.Unlock()
	testutil.AppendFile(t, path, "last words\n")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := waitDone(t, done); !errors.Is(err, errGone) {
		t.Fatalf("Follow after removal = %v, want %v", err, errGone)
	}
	if got := w.String(); got != "hello\nlast words\n" {
		t.Errorf("output %q: the removed file's last lines were not drained", got)
	}
	if n := testutil.OpenFDs(t, path); n != 0 {
		t.Fatalf("%d descriptors still open on the removed log", n)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("client went away") }

func TestFollowWriteErrorEndsAndCloses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	testutil.AppendFile(t, path, "x\n")
	err := Follow(context.Background(), path, failWriter{}, Options{Tail: -1, Interval: time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "client went away") {
		t.Fatalf("Follow with a failing writer = %v", err)
	}
	if n := testutil.OpenFDs(t, path); n != 0 {
		t.Fatalf("%d descriptors still open after a write error", n)
	}
}

func TestFollowOpenErrorIsReported(t *testing.T) {
	dir := t.TempDir()
	// A directory where the file should be: not "missing", a real error.
	path := filepath.Join(dir, "console.log")
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	err := Follow(context.Background(), path, &syncBuf{}, Options{Tail: -1, Interval: time.Millisecond})
	if err == nil {
		t.Fatal("Follow on a directory succeeded")
	}
}
