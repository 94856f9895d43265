package sshd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/agent/reaper"
)

// hangupGrace is how long a command gets after SIGHUP (its client went
// away) before it is killed.
const hangupGrace = 2 * time.Second

type ptyRequest struct {
	term       string
	rows, cols uint32
}

// session is one SSH "session" channel: at most one command.
type session struct {
	srv *Server
	log *slog.Logger
	ch  ssh.Channel

	// Touched only by the request loop until the command starts.
	env []string
	pty *ptyRequest

	mu sync.Mutex
	// guarded by mu
	started bool
	hungUp  bool            // the client is gone: start nothing more
	master  *os.File        // the PTY master, in PTY mode
	proc    *reaper.Process // nil until started, and when the start failed
	done    chan struct{}   // closed when run has finished
}

func (s *Server) serveSession(log *slog.Logger, nc ssh.NewChannel) {
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	ss := &session{srv: s, log: log, ch: ch, done: make(chan struct{})}
	for req := range reqs {
		ok, then := ss.handle(req)
		if req.WantReply {
			_ = req.Reply(ok, nil)
		}
		if then != nil {
			// Only after the reply: a command that fails at once closes
			// the channel, and the client must have its answer first.
			then()
		}
	}
	// The client closed the channel or the connection is gone.
	ss.hangup()
	ch.Close()
}

// handle answers one channel request; then, if not nil, is run after the
// reply has been sent.
func (ss *session) handle(req *ssh.Request) (ok bool, then func()) {
	switch req.Type {
	case "env":
		var p struct{ Name, Value string }
		if ssh.Unmarshal(req.Payload, &p) != nil || ss.isStarted() ||
			!validEnv(p.Name+"="+p.Value) || strings.ContainsRune(p.Name, '=') || strings.ContainsRune(p.Value, 0) {
			return false, nil
		}
		ss.env = append(ss.env, p.Name+"="+p.Value)
		return true, nil
	case "pty-req":
		var p struct {
			Term                      string
			Cols, Rows, Width, Height uint32
			Modes                     string
		}
		if ssh.Unmarshal(req.Payload, &p) != nil || ss.isStarted() {
			return false, nil
		}
		ss.pty = &ptyRequest{term: p.Term, rows: p.Rows, cols: p.Cols}
		return true, nil
	case "window-change":
		var p struct{ Cols, Rows, Width, Height uint32 }
		if ssh.Unmarshal(req.Payload, &p) != nil {
			return false, nil
		}
		return ss.resize(p.Rows, p.Cols), nil
	case "shell", "exec":
		var cmd string
		if req.Type == "exec" {
			var p struct{ Command string }
			if ssh.Unmarshal(req.Payload, &p) != nil {
				return false, nil
			}
			cmd = p.Command
		}
		ss.mu.Lock()
		if ss.started {
			ss.mu.Unlock()
			return false, nil
		}
		ss.started = true
		ss.mu.Unlock()
		shell := req.Type == "shell"
		return true, func() { go ss.run(shell, cmd) }
	case "signal":
		var p struct{ Signal string }
		if ssh.Unmarshal(req.Payload, &p) != nil {
			return false, nil
		}
		return ss.signal(p.Signal), nil
	}
	return false, nil
}

func (ss *session) isStarted() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.started
}

func (ss *session) resize(rows, cols uint32) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.master != nil {
		return setWinsize(ss.master, rows, cols) == nil
	}
	if ss.pty != nil {
		ss.pty.rows, ss.pty.cols = rows, cols
		return true
	}
	return false
}

func (ss *session) signal(name string) bool {
	sig := unix.SignalNum("SIG" + name)
	if sig == 0 {
		return false
	}
	ss.mu.Lock()
	proc := ss.proc
	ss.mu.Unlock()
	if proc == nil {
		return false
	}
	// The whole group: `sh -c 'a; b'` must not survive its shell.
	return proc.SignalGroup(sig) == nil
}

// hangup stops the command when its client is gone: SIGHUP, as a terminal
// hang-up would, then SIGKILL after a grace period. It returns once run has
// finished.
func (ss *session) hangup() {
	ss.mu.Lock()
	ss.hungUp = true
	started, proc := ss.started, ss.proc
	ss.mu.Unlock()
	if !started {
		return
	}
	if proc != nil {
		if proc.SignalGroup(unix.SIGHUP) == nil {
			t := time.NewTimer(hangupGrace)
			select {
			case <-proc.Exited():
			case <-t.C:
				_ = proc.SignalGroup(unix.SIGKILL)
			}
			t.Stop()
		}
	}
	<-ss.done
}

// run starts the command, streams its I/O, and reports its exit.
func (ss *session) run(shell bool, command string) {
	defer close(ss.done)
	defer ss.ch.Close()
	cfg := &ss.srv.cfg

	var path string
	var argv []string
	if shell {
		path = firstExisting(cfg.LoginShells)
		if path == "" {
			ss.fail(127, fmt.Sprintf("no login shell in the guest (tried %s)", strings.Join(cfg.LoginShells, ", ")))
			return
		}
		// A leading '-' makes it a login shell.
		argv = []string{"-" + filepath.Base(path)}
	} else {
		path = cfg.ExecShell
		argv = []string{filepath.Base(path), "-c", command}
	}

	env := []string{"PATH=" + DefaultPath, "HOME=" + cfg.Home, "USER=root", "LOGNAME=root", "SHELL=" + path}
	env = mergeEnv(env, cfg.Env...)
	if ss.pty != nil && ss.pty.term != "" {
		env = mergeEnv(env, "TERM="+ss.pty.term)
	}
	env = mergeEnv(env, ss.env...)
	dir := workingDir(cfg.WorkDir, cfg.Home)

	if ss.pty != nil {
		ss.runPTY(path, argv, env, dir)
	} else {
		ss.runPipes(path, argv, env, dir)
	}
}

func (ss *session) runPipes(path string, argv, env []string, dir string) {
	inR, inW, err1 := os.Pipe()
	outR, outW, err2 := os.Pipe()
	errR, errW, err3 := os.Pipe()
	if err := errors.Join(err1, err2, err3); err != nil {
		closeAll(inR, inW, outR, outW, errR, errW)
		ss.fail(126, "create pipes: "+err.Error())
		return
	}
	attr := &os.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: []*os.File{inR, outW, errW},
		// Its own process group, so signals reach the shell's children.
		Sys: &syscall.SysProcAttr{Setpgid: true},
	}
	ss.mu.Lock()
	proc, err := ss.start(path, argv, attr)
	ss.mu.Unlock()
	closeAll(inR, outW, errW) // the child has its copies
	if err != nil {
		closeAll(inW, outR, errR)
		ss.failStart(path, err)
		return
	}
	ss.log.Debug("exec", "pid", proc.Pid, "argv", argv)

	go func() {
		_, _ = io.Copy(inW, ss.ch)
		// stdin EOF from the client: the command sees EOF too.
		inW.Close()
	}()
	var wg sync.WaitGroup
	wg.Go(func() { ss.drain(ss.ch, outR, proc.Exited()) })
	wg.Go(func() { ss.drain(ss.ch.Stderr(), errR, proc.Exited()) })
	ws, werr := proc.Wait(context.Background())
	wg.Wait()
	closeAll(inW, outR, errR)
	ss.exit(ws, werr)
}

func (ss *session) runPTY(path string, argv, env []string, dir string) {
	master, tty, err := openPTY()
	if err != nil {
		ss.fail(126, err.Error())
		return
	}
	attr := &os.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: []*os.File{tty, tty, tty},
		// A new session with the terminal as its controlling tty (fd 0 in
		// the child), as a login would have.
		Sys: &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0},
	}
	// The size is set and the master published under the same lock that
	// resize takes, so no window-change is lost around the start.
	ss.mu.Lock()
	if ss.pty.rows > 0 && ss.pty.cols > 0 {
		_ = setWinsize(master, ss.pty.rows, ss.pty.cols)
	}
	ss.master = master
	proc, err := ss.start(path, argv, attr)
	if err != nil {
		ss.master = nil
	}
	ss.mu.Unlock()
	tty.Close()
	if err != nil {
		master.Close()
		ss.failStart(path, err)
		return
	}
	ss.log.Debug("exec", "pid", proc.Pid, "argv", argv, "pty", true)

	// EOF from the client is not passed on: a terminal has no EOF of its
	// own, and closing the master would hang up the command's terminal.
	go func() { _, _ = io.Copy(master, ss.ch) }()
	ss.drain(ss.ch, master, proc.Exited())
	ws, werr := proc.Wait(context.Background())
	ss.mu.Lock()
	ss.master = nil
	ss.mu.Unlock()
	master.Close()
	ss.exit(ws, werr)
}

// start starts the command unless the client is already gone; the caller
// holds mu, so hangup either sees the process or prevents it.
func (ss *session) start(path string, argv []string, attr *os.ProcAttr) (*reaper.Process, error) {
	if ss.hungUp {
		return nil, errHungUp
	}
	proc, err := ss.srv.cfg.Reaper.Start(path, argv, attr)
	if err != nil {
		return nil, err
	}
	ss.proc = proc
	return proc, nil
}

var errHungUp = errors.New("client closed the session")

// drain copies src to dst until EOF (or EIO, a PTY whose terminal side is
// closed). Once the command has exited, it stops after DrainGrace without
// data: a background child may keep the pipe open indefinitely, and
// everything the command itself wrote is already in the pipe.
func (ss *session) drain(dst io.Writer, src *os.File, exited <-chan struct{}) {
	grace := ss.srv.cfg.DrainGrace
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-exited:
			_ = src.SetReadDeadline(time.Now().Add(grace))
		case <-stop:
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		select {
		case <-exited:
			_ = src.SetReadDeadline(time.Now().Add(grace))
		default:
		}
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// exit reports the exit status and closes the channel: EOF, then
// exit-status or exit-signal, then close (the order OpenSSH uses).
func (ss *session) exit(ws unix.WaitStatus, err error) {
	_ = ss.ch.CloseWrite()
	if err != nil {
		ss.log.Warn("wait for command", "err", err)
		return
	}
	if ws.Signaled() {
		name := strings.TrimPrefix(unix.SignalName(ws.Signal()), "SIG")
		_, _ = ss.ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}{name, ws.CoreDump(), "", ""}))
		return
	}
	ss.sendStatus(ws.ExitStatus())
}

func (ss *session) sendStatus(code int) {
	_, _ = ss.ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(code)}))
}

// failStart reports a command that could not be started the way a shell
// would: 127 when the program does not exist, 126 otherwise.
func (ss *session) failStart(path string, err error) {
	if errors.Is(err, errHungUp) {
		return
	}
	code := 126
	if errors.Is(err, os.ErrNotExist) {
		code = 127
		ss.fail(code, fmt.Sprintf("cannot run %s: it does not exist in the guest", path))
		return
	}
	ss.fail(code, fmt.Sprintf("cannot run %s: %v", path, err))
}

func (ss *session) fail(code int, msg string) {
	ss.log.Warn("command failed to start", "err", msg)
	w := ss.ch.Stderr()
	nl := "\n"
	if ss.pty != nil {
		// In PTY mode the client reads only the terminal stream.
		w, nl = ss.ch, "\r\n"
	}
	_, _ = io.WriteString(w, "kiln-agent: "+msg+nl)
	_ = ss.ch.CloseWrite()
	ss.sendStatus(code)
}

func firstExisting(paths []string) string {
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// mergeEnv returns env with adds applied; a later NAME= replaces an
// earlier one in place, so no name appears twice (getenv would take the
// first).
func mergeEnv(env []string, adds ...string) []string {
	out := append([]string(nil), env...)
	for _, kv := range adds {
		name, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, old := range out {
			if n, _, _ := strings.Cut(old, "="); n == name {
				out[i], replaced = kv, true
				break
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

func closeAll(fs ...*os.File) {
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}

// workingDir is where a command starts: workDir when it is a directory in
// the guest, else home, else /.
func workingDir(workDir, home string) string {
	for _, d := range []string{workDir, home} {
		if d == "" {
			continue
		}
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			return d
		}
	}
	return "/"
}
