package sshd

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/agent/reaper"
	"github.com/kilnvm/kiln/internal/api"
)

func newSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// connect serves one connection of a new server over a pipe and returns
// the client side.
func connect(t *testing.T, r *reaper.Reaper) *ssh.Client {
	t.Helper()
	host, user := newSigner(t), newSigner(t)
	srv, err := New(Config{HostKey: host, AuthorizedKeys: []ssh.PublicKey{user.PublicKey()}, Reaper: r, DrainGrace: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// A socket pair, not net.Pipe: both SSH ends write their version
	// first, which an unbuffered pipe deadlocks.
	a, b := socketPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeConn(ctx, a)
	}()
	sconn, chans, reqs, err := ssh.NewClientConn(b, "pipe", &ssh.ClientConfig{
		User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(user)}, HostKeyCallback: ssh.FixedHostKey(host.PublicKey()),
	})
	if err != nil {
		t.Fatal(err)
	}
	cl := ssh.NewClient(sconn, chans, reqs)
	t.Cleanup(func() {
		cl.Close()
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("ServeConn did not return")
		}
	})
	return cl
}

func TestNewValidates(t *testing.T) {
	r := reaper.New(nil)
	defer r.Close()
	k := newSigner(t)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no host key", Config{AuthorizedKeys: []ssh.PublicKey{k.PublicKey()}, Reaper: r}, "no host key"},
		{"no keys", Config{HostKey: k, Reaper: r}, "no authorized keys"},
		{"no reaper", Config{HostKey: k, AuthorizedKeys: []ssh.PublicKey{k.PublicKey()}}, "no reaper"},
		{"bad env", Config{HostKey: k, AuthorizedKeys: []ssh.PublicKey{k.PublicKey()}, Reaper: r, Env: []string{"X"}}, `"X"`},
		{"relative workdir", Config{HostKey: k, AuthorizedKeys: []ssh.PublicKey{k.PublicKey()}, Reaper: r, WorkDir: "srv"}, `workdir "srv"`},
	} {
		if _, err := New(tc.cfg); err == nil || !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v", tc.name, err)
		}
	}
}

// TestHangupKillsCommand: when the client closes the session while the
// command runs, the command and its children are stopped.
func TestHangupKillsCommand(t *testing.T) {
	r := reaper.New(nil)
	defer r.Close()
	cl := connect(t, r)
	sess, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// A shell that ignores nothing, with a child of its own.
	if err := sess.Start("sleep 300 & echo $$ $!; wait"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := out.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range strings.Fields(string(buf[:n])) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("pids %q", buf[:n])
		}
		pids = append(pids, pid)
		t.Cleanup(func() { unix.Kill(pid, unix.SIGKILL) })
	}
	sess.Close()
	deadline := time.Now().Add(hangupGrace + 10*time.Second)
	for _, pid := range pids {
		for unix.Kill(pid, 0) == nil && !isZombie(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("pid %d still running after the client hung up", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil && strings.Contains(string(b), ") Z ")
}

func TestSessionRequestRules(t *testing.T) {
	r := reaper.New(nil)
	defer r.Close()
	cl := connect(t, r)
	sess, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.Setenv("BAD=NAME", "x"); err == nil {
		t.Error("env name with '=' accepted")
	}
	if ok, _ := sess.SendRequest("signal", true, ssh.Marshal(struct{ Signal string }{"TERM"})); ok {
		t.Error("signal before start accepted")
	}
	if ok, _ := sess.SendRequest("subsystem", true, ssh.Marshal(struct{ Name string }{"sftp"})); ok {
		t.Error("unknown subsystem accepted")
	}
	stdin, _ := sess.StdinPipe()
	if err := sess.Start("cat"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := sess.SendRequest("exec", true, ssh.Marshal(struct{ Command string }{"true"})); ok {
		t.Error("second exec on one session accepted")
	}
	if err := sess.Setenv("LATE", "x"); err == nil {
		t.Error("env after start accepted")
	}
	if ok, _ := sess.SendRequest("signal", true, ssh.Marshal(struct{ Signal string }{"NOSUCH"})); ok {
		t.Error("unknown signal accepted")
	}
	if ok, _ := sess.SendRequest("window-change", true, ssh.Marshal(struct{ C, R, W, H uint32 }{80, 24, 0, 0})); ok {
		t.Error("window-change without a pty accepted")
	}
	stdin.Close()
	if err := sess.Wait(); err != nil {
		t.Errorf("cat after stdin EOF: %v", err)
	}
	if _, _, err := cl.OpenChannel("x11", nil); err == nil {
		t.Error("x11 channel accepted")
	}
}

func TestMergeEnv(t *testing.T) {
	got := mergeEnv([]string{"A=1", "B=2"}, "B=3", "C=4", "A=5")
	want := []string{"A=5", "B=3", "C=4"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("got %v, want %v", got, want)
	}
}

func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0], conns[1]
}

func TestWorkingDir(t *testing.T) {
	dir := t.TempDir()
	file := dir + "/file"
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ workDir, home, want string }{
		{"", dir, dir},
		{dir, "/nonexistent-home", dir},
		{"/nonexistent-workdir", dir, dir},
		{file, dir, dir}, // not a directory
		{"/nonexistent-workdir", "/nonexistent-home", "/"},
	} {
		if got := workingDir(tc.workDir, tc.home); got != tc.want {
			t.Errorf("workingDir(%q, %q) = %q, want %q", tc.workDir, tc.home, got, tc.want)
		}
	}
}
