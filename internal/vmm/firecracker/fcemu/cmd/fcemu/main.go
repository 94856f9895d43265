// Command fcemu is a TEST-ONLY fake of the firecracker binary: it takes
// firecracker's --api-sock and --id flags and serves an emulated API
// (package fcemu) that boots the guest with QEMU. kiln's e2e suite builds
// it and points firecracker_binary at it; never install it as firecracker.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/kilnvm/kiln/internal/vmm/firecracker/fcemu"
)

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("fcemu", flag.ContinueOnError)
	apiSock := fs.String("api-sock", "/run/firecracker.socket", "API socket path")
	id := fs.String("id", "anonymous-instance", "microVM id")
	version := fs.Bool("version", false, "print the emulated version")
	qemuBin := fs.String("qemu", os.Getenv("FCEMU_QEMU"), "qemu-system-x86_64 binary")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if *version {
		fmt.Printf("Firecracker v%s (kiln fcemu test emulator)\n", fcemu.SpecVersion)
		return 0
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("fcemu", *id)
	emu, err := fcemu.New(fcemu.Config{
		ID: *id, WorkDir: fcemu.WorkDirFor(*apiSock), QEMU: *qemuBin, Logger: log,
		// QEMU opens the console itself: our stdout, by path.
		Console: "/proc/" + strconv.Itoa(os.Getpid()) + "/fd/1",
	})
	if err != nil {
		log.Error("start", "err", err)
		return 1
	}
	os.Remove(*apiSock)
	l, err := net.Listen("unix", *apiSock)
	if err != nil {
		log.Error("listen", "err", err)
		return 1
	}
	defer os.Remove(*apiSock)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := emu.Serve(ctx, l); err != nil {
		log.Error("serve", "err", err)
	}
	emu.Shutdown()
	if ctx.Err() != nil {
		log.Info("terminated by signal")
		return 0
	}
	if err := emu.Err(); err != nil {
		log.Info("guest stopped", "err", err)
	}
	return 0
}
