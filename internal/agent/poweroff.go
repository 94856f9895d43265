package agent

import (
	"bytes"
	"log/slog"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// sigSystemdPoweroff is SIGRTMIN+4, which systemd (as PID 1) takes as
// "poweroff". SIGRTMIN is counted as glibc defines it (34), not the
// kernel's 32, because that is the number systemd listens on.
const sigSystemdPoweroff = unix.Signal(34 + 4)

// pfKthread is PF_KTHREAD in /proc/PID/stat's flags field.
const pfKthread = 0x00200000

// PowerOff powers the guest off. As PID 1 it stops every process (SIGTERM,
// a few seconds, SIGKILL), syncs, remounts the root read-only and calls
// reboot(POWER_OFF); it returns only if that fails. Otherwise it syncs and
// asks PID 1 (systemd) to power off.
func PowerOff(log *slog.Logger, pid1 bool) {
	unix.Sync()
	if !pid1 {
		if err := unix.Kill(1, sigSystemdPoweroff); err != nil {
			log.Error("ask PID 1 to power off", "err", err)
		}
		return
	}
	stopAll(log, unix.SIGTERM, 5*time.Second)
	stopAll(log, unix.SIGKILL, 2*time.Second)
	unix.Sync()
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		log.Warn("remount / read-only", "err", err)
	}
	unix.Sync()
	halt(log)
}

// halt powers the machine off; as PID 1 it must never return to a caller
// that would exit (the kernel panics when init exits).
func halt(log *slog.Logger) {
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	log.Error("power off", "err", err)
	err = unix.Reboot(unix.LINUX_REBOOT_CMD_HALT)
	log.Error("halt", "err", err)
}

// stopAll sends sig to every process but us, then waits until none is
// left or the timeout passes.
func stopAll(log *slog.Logger, sig unix.Signal, timeout time.Duration) {
	if len(userProcesses()) == 0 {
		return
	}
	_ = unix.Kill(-1, sig)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if len(userProcesses()) == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond) // polling /proc: nothing to wait on
	}
	log.Warn("processes still running", "signal", sig.String(), "pids", userProcesses())
}

// userProcesses lists the pids of live, non-kernel processes other than
// this one. Zombies do not count: the reaper collects them.
func userProcesses() []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		state, flags, ok := parseStat(b)
		if !ok || state == 'Z' || state == 'X' || flags&pfKthread != 0 {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// parseStat returns the state and flags fields of /proc/PID/stat. The
// command name may contain spaces and parentheses, so fields are counted
// from the last ')'.
func parseStat(b []byte) (state byte, flags uint64, ok bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := bytes.Fields(b[i+1:])
	// After the name: state(3) ppid pgrp session tty_nr tpgid flags(9).
	if len(f) < 7 || len(f[0]) != 1 {
		return 0, 0, false
	}
	flags, err := strconv.ParseUint(string(f[6]), 10, 64)
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], flags, true
}
