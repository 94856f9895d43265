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

	"github.com/kilnvm/kiln/internal/agent/ports"
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
	_, portErr := FindVirtioPort("/sys/class/virtio-ports", proto.SerialPortName)
	var servers []func(context.Context) error
	for _, ch := range ChannelsToServe(cfg.Channel, portErr == nil) {
		switch ch {
		case ChannelVsock:
			servers = append(servers, func(ctx context.Context) error { return ServeVsock(ctx, srv.ServeConn, log) })
		default:
			s := &SerialServer{
				Open:   VirtioPortOpener("/sys/class/virtio-ports", "/dev", proto.SerialPortName),
				Serve:  srv.ServeConn,
				Logger: log,
			}
			servers = append(servers, s.Run)
		}
	}
	return runAll(ctx, servers)
}

// ChannelsToServe decides which control channels the agent serves: the
// configured one, and also the virtio-serial port when the VM has one. A
// VM configured for vsock whose VMM gives it a serial port instead (the
// Firecracker API emulator, which boots with QEMU and bridges hybrid vsock
// to the serial port) is then still reachable.
func ChannelsToServe(configured string, serialPortPresent bool) []string {
	if configured != ChannelVsock {
		return []string{ChannelSerial}
	}
	if serialPortPresent {
		return []string{ChannelVsock, ChannelSerial}
	}
	return []string{ChannelVsock}
}

// runAll runs every server until ctx ends or one of them returns; it then
// stops the others and returns the first error.
func runAll(ctx context.Context, servers []func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(servers))
	for _, s := range servers {
		go func() { errs <- s(ctx) }()
	}
	first := <-errs
	cancel()
	for range len(servers) - 1 {
		<-errs
	}
	return first
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
		WorkDir:        cfg.WorkDir,
		Health:         health,
		PowerOff:       poweroff,
		Ports:          func() ([]proto.ListeningPort, error) { return ports.Listening("/proc") },
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
