// Command fcemu is a TEST-ONLY fake of the firecracker binary: it takes
// firecracker's --api-sock and --id flags and serves an emulated API
// (package fcemu) that boots the guest with QEMU. kiln's e2e suite builds
// it and points firecracker_binary at it; never install it as firecracker.
// It also takes the flags jailer adds (--start-time-us, --start-time-cpu-us)
// and, the environment being cleared by jailer, a default PATH.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

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
	// Added by jailer; accepted and ignored, as firecracker only logs them.
	fs.Int64("start-time-us", 0, "jailer start time (ignored)")
	fs.Int64("start-time-cpu-us", 0, "jailer CPU time (ignored)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if os.Getenv("PATH") == "" {
		// jailer clears the environment; QEMU is still looked up on PATH.
		os.Setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
	}
	if *version {
		fmt.Printf("Firecracker v%s (kiln fcemu test emulator)\n", fcemu.SpecVersion)
		return 0
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("fcemu", *id)
	// Firecracker writes the guest console to its stdout. QEMU opens the
	// console by path, which checks the file's permissions: a jailed
	// fcemu's stdout (opened by root, owned by root) would be refused. So
	// QEMU opens a pipe of ours, created as our own user, and we copy it
	// to stdout as Firecracker would write it.
	pr, pw, err := os.Pipe()
	if err != nil {
		log.Error("console pipe", "err", err)
		return 1
	}
	copied := make(chan struct{})
	go func() { io.Copy(os.Stdout, pr); close(copied) }()
	defer func() {
		pw.Close()
		select { // QEMU, which holds the pipe too, is gone by now
		case <-copied:
		case <-time.After(5 * time.Second):
		}
	}()
	emu, err := fcemu.New(fcemu.Config{
		ID: *id, WorkDir: fcemu.WorkDirFor(*apiSock), QEMU: *qemuBin, Logger: log,
		Console: "/proc/" + strconv.Itoa(os.Getpid()) + "/fd/" + strconv.Itoa(int(pw.Fd())),
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
