package sshd

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal pair. It does not use creack/pty: that
// package reaches the master through File.Fd(), which switches the
// descriptor to blocking mode, so reads could no longer be given deadlines
// (needed to stop draining output when a background child keeps the
// terminal open) and every read would pin an OS thread.
func openPTY() (master, tty *os.File, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		// The usual cause: no devpts on /dev/pts (the image's init did
		// not mount it), which makes /dev/ptmx fail with ENOENT.
		return nil, nil, fmt.Errorf("open /dev/ptmx (is devpts mounted on /dev/pts?): %w", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("pty number: %w", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	name := fmt.Sprintf("/dev/pts/%d", n)
	tfd, err := unix.Open(name, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("open %s: %w", name, err)
	}
	// A non-blocking descriptor makes os.NewFile use the runtime poller.
	return os.NewFile(uintptr(fd), "/dev/ptmx"), os.NewFile(uintptr(tfd), name), nil
}

// setWinsize sets the terminal size; the kernel sends SIGWINCH to the
// terminal's foreground process group.
func setWinsize(master *os.File, rows, cols uint32) error {
	rc, err := master.SyscallConn()
	if err != nil {
		return err
	}
	ws := &unix.Winsize{Row: clamp16(rows), Col: clamp16(cols)}
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws)
	}); err != nil {
		return err
	}
	return ioErr
}

func clamp16(v uint32) uint16 {
	if v > 0xffff {
		return 0xffff
	}
	return uint16(v)
}
