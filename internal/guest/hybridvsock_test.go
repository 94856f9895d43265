package guest

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/api"
)

// fakeHybridVsock accepts one connection, reads the CONNECT line, and
// either answers OK and echoes, or closes.
func fakeHybridVsock(t *testing.T, accept bool) (string, <-chan string) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "v.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	lines := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(io.LimitReader(c, 13)).ReadString('\n')
		lines <- line
		if !accept {
			return
		}
		io.WriteString(c, "OK 1073741825\n")
		io.Copy(c, c)
	}()
	return sock, lines
}

func TestHybridVsockHandshake(t *testing.T) {
	sock, lines := fakeHybridVsock(t, true)
	c, err := HybridVsock{SocketPath: sock, Port: 1024}.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := <-lines; got != "CONNECT 1024\n" {
		t.Fatalf("handshake = %q", got)
	}
	if _, err := io.WriteString(c, "ping"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo = %q, %v", buf, err)
	}
}

func TestHybridVsockRefused(t *testing.T) {
	sock, _ := fakeHybridVsock(t, false)
	_, err := HybridVsock{SocketPath: sock, Port: 1024}.Open(context.Background())
	if !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("closed handshake = %v, want unavailable", err)
	}
	_, err = HybridVsock{SocketPath: filepath.Join(t.TempDir(), "none"), Port: 1024}.Open(context.Background())
	if !errors.Is(err, api.ErrUnavailable) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing socket = %v", err)
	}
}
