package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/agent/reaper"
	"github.com/kilnvm/kiln/internal/agent/sshd"
)

// ServiceOptions configure service mode.
type ServiceOptions struct {
	Config  proto.VMConfig
	Version string
	Logger  *slog.Logger
	// Reaper is the process's reaper; RunService makes one when nil.
	Reaper *reaper.Reaper
	// PowerOff overrides how the guest is powered off (tests); nil picks
	// the PID 1 or the systemd way.
	PowerOff func()
}

// RunService serves the control channel named by the config until ctx
// ends. It sets the hostname first (harmless when init mode already did).
func RunService(ctx context.Context, opts ServiceOptions) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg := opts.Config
	if cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			log.Warn("set hostname", "hostname", cfg.Hostname, "err", err)
		}
	}
	r := opts.Reaper
	if r == nil {
		r = reaper.New(log)
		defer r.Close()
	}
	pid1 := os.Getpid() == 1
	poweroff := opts.PowerOff
	if poweroff == nil {
		poweroff = func() { PowerOff(log, pid1) }
	}
	srv, err := NewSSHServer(cfg, r, log, HealthFunc(opts.Version, pid1), poweroff)
	if err != nil {
		return err
	}
	switch cfg.Channel {
	case ChannelVsock:
		return ServeVsock(ctx, srv.ServeConn, log)
	default:
		s := &SerialServer{
			Open:   VirtioPortOpener("/sys/class/virtio-ports", "/dev", proto.SerialPortName),
			Serve:  srv.ServeConn,
			Logger: log,
		}
		return s.Run(ctx)
	}
}

// NewSSHServer builds the agent's SSH server from the per-VM config.
func NewSSHServer(cfg proto.VMConfig, r *reaper.Reaper, log *slog.Logger, health func() proto.Health, poweroff func()) (*sshd.Server, error) {
	hostKey, err := ssh.ParsePrivateKey([]byte(cfg.HostKey))
	if err != nil {
		return nil, fmt.Errorf("parse host key: %w", err)
	}
	keys, err := AuthorizedKeys(cfg)
	if err != nil {
		return nil, err
	}
	return sshd.New(sshd.Config{
		HostKey:        hostKey,
		AuthorizedKeys: keys,
		Reaper:         r,
		Env:            cfg.Env,
		Health:         health,
		PowerOff:       poweroff,
		Logger:         log,
	})
}

// HealthFunc answers proto.RequestHealth from the running system.
func HealthFunc(version string, pid1 bool) func() proto.Health {
	return func() proto.Health {
		h := proto.Health{Version: version, PID1: "kiln-agent"}
		h.Hostname, _ = os.Hostname()
		var u unix.Utsname
		if unix.Uname(&u) == nil {
			h.Kernel = unix.ByteSliceToString(u.Release[:])
		}
		if !pid1 {
			if b, err := os.ReadFile("/proc/1/comm"); err == nil {
				h.PID1 = strings.TrimSpace(string(b))
			}
		}
		if b, err := os.ReadFile("/proc/uptime"); err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				h.Uptime, _ = strconv.ParseFloat(f[0], 64)
			}
		}
		return h
	}
}
