// Command kiln-agent is kiln's guest agent. It is static (CGO_ENABLED=0)
// and runs in every VM twice over: as /init of the initramfs (init mode,
// chosen when it is PID 1) and as `kiln-agent service`, the control
// channel's SSH server, started by the image's systemd unit or in-process
// when the agent stays PID 1. See package internal/agent.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"

	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/agent"
	"github.com/kilnvm/kiln/internal/agent/proto"
)

// version is set at link time: -ldflags "-X main.version=...".
var version = ""

func main() {
	v := agentVersion()
	if os.Getpid() == 1 {
		agent.RunInit(v) // never returns
	}
	os.Exit(run(os.Args[1:], v, os.Stdout, os.Stderr))
}

func run(args []string, v string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "version":
		fmt.Fprintln(stdout, "kiln-agent", v)
		return 0
	case "service":
		fs := flag.NewFlagSet("service", flag.ContinueOnError)
		fs.SetOutput(stderr)
		configPath := fs.String("config", proto.RunConfigPath, "per-VM config `file`")
		debugLog := fs.Bool("debug", false, "log debug messages")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		if fs.NArg() > 0 {
			fmt.Fprintf(stderr, "kiln-agent service: unexpected arguments %q\n", fs.Args())
			return 2
		}
		level := slog.LevelInfo
		if *debugLog {
			level = slog.LevelDebug
		}
		log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
		cfg, err := agent.LoadConfig(*configPath)
		if err != nil {
			fmt.Fprintf(stderr, "kiln-agent service: %v\n", err)
			return 1
		}
		ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
		defer stop()
		log.Info("kiln-agent service starting", "version", v, "channel", cfg.Channel)
		if err := agent.RunService(ctx, agent.ServiceOptions{Config: cfg, Version: v, Logger: log}); err != nil && ctx.Err() == nil {
			fmt.Fprintf(stderr, "kiln-agent service: %v\n", err)
			return 1
		}
		return 0
	case "-h", "--help", "help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "kiln-agent: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  kiln-agent service [--config FILE] [--debug]   serve the control channel
  kiln-agent version                             print the version
As PID 1 (the initramfs's /init) it runs init mode.
`)
}

func agentVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
