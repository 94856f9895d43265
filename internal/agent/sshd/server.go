// Package sshd is the guest agent's SSH server: the control channel between
// the kiln daemon and a VM. It runs commands (with or without a PTY),
// forwards TCP connections inside the guest, and answers kiln's own global
// requests (health, poweroff) defined in internal/agent/proto.
//
// The server does not listen anywhere: ServeConn serves one connection, which
// the agent takes from a yamux stream (virtio-serial) or a vsock listener.
// Authentication is public-key only, against the keys of the per-VM config;
// the user name is ignored and every command runs as the agent's user (root).
package sshd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/agent/reaper"
	"github.com/kilnvm/kiln/internal/api"
)

// DefaultPath is the PATH commands get unless the config's Env sets one.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// handshakeTimeout bounds the SSH handshake; generous because a TCG guest
// is slow at crypto.
const handshakeTimeout = 60 * time.Second

// Config is what a Server needs. HostKey, AuthorizedKeys and Reaper are
// required.
type Config struct {
	HostKey        ssh.Signer
	AuthorizedKeys []ssh.PublicKey
	// Reaper starts every command and delivers its exit status.
	Reaper *reaper.Reaper
	// Env is added to every command's environment (after the defaults,
	// before the session's own env requests).
	Env []string
	// Health answers proto.RequestHealth. Nil answers an empty Health.
	Health func() proto.Health
	// PowerOff is called (once, in its own goroutine) after the reply to
	// proto.RequestPoweroff has been sent. Nil refuses the request.
	PowerOff func()
	// Ports answers proto.RequestPorts. Nil refuses the request.
	Ports  func() ([]proto.ListeningPort, error)
	Logger *slog.Logger

	// LoginShells are tried in order for `shell` requests; default
	// /bin/bash, /bin/sh.
	LoginShells []string
	// ExecShell runs `exec` requests as ExecShell -c CMD; default /bin/sh.
	ExecShell string
	// Home is $HOME and the working directory (/ when it does not exist);
	// default /root.
	Home string
	// WorkDir, when set and a directory in the guest, is the working
	// directory instead of Home (an OCI image's WorkingDir).
	WorkDir string
	// DrainGrace is how long output is still read after the command has
	// exited while its pipes stay silent (a background child may hold them
	// open forever); default 250ms.
	DrainGrace time.Duration
}

// Server serves SSH connections. It is safe for concurrent use.
type Server struct {
	cfg       Config
	sshConfig *ssh.ServerConfig
	logger    *slog.Logger
	poweroff  atomic.Bool // set once a poweroff was accepted
}

// New checks cfg and builds a Server.
func New(cfg Config) (*Server, error) {
	if cfg.HostKey == nil {
		return nil, fmt.Errorf("ssh server: no host key: %w", api.ErrBadRequest)
	}
	if len(cfg.AuthorizedKeys) == 0 {
		return nil, fmt.Errorf("ssh server: no authorized keys: %w", api.ErrBadRequest)
	}
	if cfg.Reaper == nil {
		return nil, fmt.Errorf("ssh server: no reaper: %w", api.ErrBadRequest)
	}
	for _, kv := range cfg.Env {
		if !validEnv(kv) {
			return nil, fmt.Errorf("ssh server: env entry %q is not NAME=VALUE: %w", kv, api.ErrBadRequest)
		}
	}
	if cfg.WorkDir != "" && (!filepath.IsAbs(cfg.WorkDir) || strings.ContainsRune(cfg.WorkDir, 0)) {
		return nil, fmt.Errorf("ssh server: workdir %q is not an absolute path: %w", cfg.WorkDir, api.ErrBadRequest)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.LoginShells) == 0 {
		cfg.LoginShells = []string{"/bin/bash", "/bin/sh"}
	}
	if cfg.ExecShell == "" {
		cfg.ExecShell = "/bin/sh"
	}
	if cfg.Home == "" {
		cfg.Home = "/root"
	}
	if cfg.DrainGrace <= 0 {
		cfg.DrainGrace = 250 * time.Millisecond
	}
	allowed := make(map[string]bool, len(cfg.AuthorizedKeys))
	for _, k := range cfg.AuthorizedKeys {
		allowed[string(k.Marshal())] = true
	}
	sc := &ssh.ServerConfig{
		ServerVersion: "SSH-2.0-kiln-agent",
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if allowed[string(key.Marshal())] {
				return &ssh.Permissions{}, nil
			}
			return nil, fmt.Errorf("key %s is not authorized", ssh.FingerprintSHA256(key))
		},
	}
	sc.AddHostKey(cfg.HostKey)
	return &Server{cfg: cfg, sshConfig: sc, logger: cfg.Logger}, nil
}

// ServeConn runs the SSH protocol on conn until the client disconnects or
// ctx ends, then waits for the connection's sessions to finish (their
// commands are killed when the client is gone). It closes conn.
func (s *Server) ServeConn(ctx context.Context, conn net.Conn) error {
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	_ = conn.SetDeadline(time.Now().Add(handshakeTimeout))
	sconn, chans, reqs, err := ssh.NewServerConn(conn, s.sshConfig)
	if err != nil {
		return fmt.Errorf("ssh handshake: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	defer sconn.Close()
	log := s.logger.With("session", fmt.Sprintf("%x", sconn.SessionID()[:4]))
	log.Debug("ssh connection", "user", sconn.User())

	var wg sync.WaitGroup
	wg.Go(func() { s.globalRequests(log, reqs) })
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
			wg.Go(func() { s.serveSession(log, nc) })
		case "direct-tcpip":
			wg.Go(func() { s.directTCPIP(ctx, log, nc) })
		default:
			_ = nc.Reject(ssh.UnknownChannelType, "unsupported channel type "+nc.ChannelType())
		}
	}
	// chans is closed: the transport is gone. Sessions see their request
	// channels close and kill their commands.
	cancel()
	wg.Wait()
	return nil
}

func (s *Server) globalRequests(log *slog.Logger, reqs <-chan *ssh.Request) {
	for req := range reqs {
		switch req.Type {
		case proto.RequestHealth:
			var h proto.Health
			if s.cfg.Health != nil {
				h = s.cfg.Health()
			}
			b, err := json.Marshal(h)
			if err != nil {
				_ = req.Reply(false, nil)
				continue
			}
			_ = req.Reply(true, b)
		case proto.RequestPoweroff:
			if s.cfg.PowerOff == nil {
				_ = req.Reply(false, []byte("poweroff is not supported here"))
				continue
			}
			// Reply first: once the guest powers off nobody can answer.
			_ = req.Reply(true, nil)
			if s.poweroff.CompareAndSwap(false, true) {
				log.Info("poweroff requested")
				go s.cfg.PowerOff()
			}
		case proto.RequestPorts:
			s.replyPorts(req)
		default:
			if req.WantReply {
				_ = req.Reply(false, nil)
			}
		}
	}
}

// directTCPIP dials host:port inside the guest and splices it to the channel
// (what `ssh -L` and `-W` use).
func (s *Server) directTCPIP(ctx context.Context, log *slog.Logger, nc ssh.NewChannel) {
	var p struct {
		Host     string
		Port     uint32
		OrigHost string
		OrigPort uint32
	}
	if err := ssh.Unmarshal(nc.ExtraData(), &p); err != nil {
		_ = nc.Reject(ssh.ConnectionFailed, "malformed direct-tcpip request")
		return
	}
	addr := net.JoinHostPort(p.Host, fmt.Sprint(p.Port))
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	var d net.Dialer
	tcp, err := d.DialContext(dctx, "tcp", addr)
	cancel()
	if err != nil {
		_ = nc.Reject(ssh.ConnectionFailed, fmt.Sprintf("dial %s in the guest: %v", addr, err))
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		tcp.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	log.Debug("direct-tcpip", "addr", addr)
	splice(ch, tcp.(*net.TCPConn))
}

// splice copies both ways, half-closing each direction at EOF, and closes
// both ends once both directions are done.
func splice(ch ssh.Channel, tcp *net.TCPConn) {
	var wg sync.WaitGroup
	wg.Go(func() {
		_, _ = io.Copy(tcp, ch)
		_ = tcp.CloseWrite()
	})
	wg.Go(func() {
		_, _ = io.Copy(ch, tcp)
		_ = ch.CloseWrite()
	})
	wg.Wait()
	tcp.Close()
	ch.Close()
}

func validEnv(kv string) bool {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return i > 0
		}
		if kv[i] == 0 {
			return false
		}
	}
	return false
}
