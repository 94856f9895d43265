package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/api/client"
	"github.com/kilnvm/kiln/internal/config"
	"github.com/kilnvm/kiln/internal/daemon"
)

func daemonVersion() string { return daemon.Version }

func newDaemonCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "daemon",
		Short: "Run the kiln daemon in the foreground (as root)",
		Long:  "Run the kiln daemon in the foreground. It owns VMs, images and kernels and serves the API on its Unix socket. Running VMs survive a daemon restart.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := e.config()
			if err != nil {
				return err
			}
			if os.Geteuid() != 0 {
				return fmt.Errorf("the kiln daemon must run as root (it manages disks, TAP devices and VMM processes): %w", api.ErrPermissionDenied)
			}
			logger := slog.New(slog.NewJSONHandler(e.stderr, &slog.HandlerOptions{Level: cfg.SlogLevel()}))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			d, err := daemon.Open(ctx, cfg, daemon.Options{Logger: logger})
			if err != nil {
				return err
			}
			return d.Serve(ctx)
		},
	}
}

// startDaemon launches `kiln daemon` detached (its own session, output to
// the daemon log) and waits until its socket answers.
func startDaemon(ctx context.Context, e *env, cfg config.Config) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	l := cfg.Layout()
	if err := os.MkdirAll(l.StateDir, 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(l.DaemonLog(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("open daemon log: %w", err)
	}
	defer logf.Close()
	args := []string{"daemon"}
	if e.configPath != "" {
		args = append(args, "--config", e.configPath)
	}
	if e.socket != "" {
		args = append(args, "--socket", e.socket)
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start kiln daemon: %w", err)
	}
	fmt.Fprintf(e.stderr, "%s\n", e.dim(fmt.Sprintf("started kiln daemon (pid %d, log %s)", cmd.Process.Pid, l.DaemonLog())))
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	c := client.New(cfg.SocketPath())
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := c.Version(ctx); err == nil {
			return nil
		}
		select {
		case err := <-exited:
			return api.Hinted(fmt.Errorf("kiln daemon exited at start (%v): %w", err, api.ErrUnavailable), "see "+l.DaemonLog())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return api.Hinted(fmt.Errorf("kiln daemon did not answer on %s within 30s: %w", cfg.SocketPath(), api.ErrUnavailable), "see "+l.DaemonLog())
}
