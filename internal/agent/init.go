package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/agent/proto"
)

// NewRoot is where init mode mounts the root filesystem before switching.
const NewRoot = "/newroot"

// rootDeviceTimeout bounds the wait for the root block device to appear
// after its driver module was loaded.
const rootDeviceTimeout = 30 * time.Second

// RunInit is init mode: the agent as /init of the initramfs. It loads the
// modules, mounts the root disk and either executes the image's init or
// stays PID 1 and serves the control channel. It never returns: on a fatal
// error it prints it on the console and powers the VM off, because PID 1
// exiting would panic the kernel.
func RunInit(version string) {
	in := &initMode{version: version, start: time.Now(), console: os.Stderr}
	err := in.run()
	in.fatal(err)
}

type initMode struct {
	version string
	start   time.Time
	console io.Writer
}

func (in *initMode) printf(format string, args ...any) {
	fmt.Fprintf(in.console, "kiln-agent: "+format+"\n", args...)
}

func (in *initMode) fatal(err error) {
	in.printf("fatal: %v", err)
	in.printf("powering off")
	unix.Sync()
	log := slog.New(slog.NewTextHandler(in.console, nil))
	halt(log)
	for {
		// Power-off failed: idle rather than exit (which panics the kernel).
		time.Sleep(time.Hour)
	}
}

func (in *initMode) run() error {
	if err := mountEarly(); err != nil {
		return err
	}
	if err := in.useConsole(); err != nil {
		in.printf("warning: %v", err)
	}
	in.printf("%s starting as init", in.version)

	t := time.Now()
	n, err := LoadModules(proto.ModulesListPath, func(path string, err error) {
		in.printf("warning: module %s: %v", path, err)
	})
	if err != nil {
		return err
	}
	in.printf("loaded %d modules in %.2fs", n, time.Since(t).Seconds())

	raw, err := os.ReadFile(proto.ConfigPath)
	if err != nil {
		return fmt.Errorf("read vm config: %w", err)
	}
	cfg, err := ParseConfig(raw)
	if err == nil {
		err = checkInitConfig(cfg)
	}
	if err != nil {
		return fmt.Errorf("vm config %s: %w", proto.ConfigPath, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), rootDeviceTimeout)
	err = waitForPath(ctx, cfg.RootDevice)
	cancel()
	if err != nil {
		return fmt.Errorf("root device %s did not appear within %s (is its driver in the module list?): %w", cfg.RootDevice, rootDeviceTimeout, err)
	}
	if err := os.MkdirAll(NewRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(cfg.RootDevice, NewRoot, cfg.RootFSType, 0, ""); err != nil {
		return fmt.Errorf("mount root %s (%s) on %s: %w", cfg.RootDevice, cfg.RootFSType, NewRoot, err)
	}
	in.printf("root %s (%s) mounted after %.2fs", cfg.RootDevice, cfg.RootFSType, time.Since(in.start).Seconds())

	if cfg.Network != nil {
		t := time.Now()
		nctx, cancel := context.WithTimeout(context.Background(), nicTimeout)
		if err := ConfigureNetwork(nctx, *cfg.Network, NewRoot); err != nil {
			in.printf("warning: network: %v", err)
		} else {
			in.printf("network %s via %s up in %.2fs", cfg.Network.Address, cfg.Network.Gateway, time.Since(t).Seconds())
		}
		cancel()
	}
	d, err := DecideInit(cfg.Init, NewRoot)
	if err != nil {
		return err
	}
	if cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			in.printf("warning: set hostname: %v", err)
		}
	}
	if d.Mode == proto.InitImage {
		in.printf("switching to the image's init %s (%s)", d.Init, d.Reason)
		return in.execImageInit(raw)
	}
	in.printf("staying PID 1 (%s)", d.Reason)
	return in.serveAsPID1(cfg)
}

// execImageInit hands the VM to the image's init; on success it does not
// return.
func (in *initMode) execImageInit(rawConfig []byte) error {
	run := filepath.Join(NewRoot, "run")
	if err := os.MkdirAll(run, 0o755); err != nil {
		return err
	}
	// systemd keeps an existing /run mount, so what is put here survives.
	if err := unix.Mount("tmpfs", run, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", run, err)
	}
	agentPath := filepath.Join(NewRoot, proto.AgentRunPath)
	if err := os.MkdirAll(filepath.Dir(agentPath), 0o755); err != nil {
		return err
	}
	if err := copyFile("/proc/self/exe", agentPath, 0o755); err != nil {
		return fmt.Errorf("copy the agent into the new root: %w", err)
	}
	if err := os.WriteFile(filepath.Join(NewRoot, proto.RunConfigPath), rawConfig, 0o600); err != nil {
		return fmt.Errorf("copy the vm config into the new root: %w", err)
	}
	if err := switchRoot(NewRoot); err != nil {
		return err
	}
	argv := append([]string{ImageInit}, os.Args[1:]...)
	err := unix.Exec(ImageInit, argv, os.Environ())
	return fmt.Errorf("exec %s: %w", ImageInit, err)
}

// serveAsPID1 switches into the new root, sets up what a system needs, and
// serves the control channel forever.
func (in *initMode) serveAsPID1(cfg proto.VMConfig) error {
	if err := switchRoot(NewRoot); err != nil {
		return err
	}
	if err := mountSystem(); err != nil {
		return err
	}
	if err := loopbackUp(); err != nil {
		in.printf("warning: bring up lo: %v", err)
	}
	log := slog.New(slog.NewTextHandler(in.console, &slog.HandlerOptions{Level: slog.LevelInfo}))
	in.printf("ready after %.2fs, serving the %s control channel", time.Since(in.start).Seconds(), cfg.Channel)
	err := RunService(context.Background(), ServiceOptions{Config: cfg, Version: in.version, Logger: log})
	return fmt.Errorf("service mode ended: %w", err)
}

// mountEarly mounts /proc, /sys and /dev in the initramfs.
func mountEarly() error {
	for _, m := range []struct{ fstype, target string }{
		{"proc", "/proc"}, {"sysfs", "/sys"}, {"devtmpfs", "/dev"},
	} {
		if err := mountFS(m.fstype, m.target, unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil {
			return err
		}
	}
	return nil
}

// mountSystem mounts what a system without its own init needs, beyond the
// /proc, /sys and /dev that were moved over from the initramfs.
func mountSystem() error {
	mounts := []struct {
		fstype, target string
		flags          uintptr
		data           string
	}{
		// ptmxmode: let non-root users open /dev/pts/ptmx too.
		{"devpts", "/dev/pts", unix.MS_NOSUID | unix.MS_NOEXEC, "ptmxmode=0666,mode=0620"},
		{"tmpfs", "/dev/shm", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"tmpfs", "/tmp", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	}
	for _, m := range mounts {
		if err := mountFS(m.fstype, m.target, m.flags, m.data); err != nil {
			return err
		}
	}
	// What udev or systemd would create; bash's process substitution
	// needs /dev/fd.
	for name, target := range map[string]string{
		"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(target, name); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create %s: %w", name, err)
		}
	}
	return nil
}

func mountFS(fstype, target string, flags uintptr, data string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", target, err)
	}
	if err := unix.Mount(fstype, target, fstype, flags, data); err != nil && err != unix.EBUSY {
		return fmt.Errorf("mount %s on %s: %w", fstype, target, err)
	}
	return nil
}

// useConsole makes /dev/console the standard streams, whatever the kernel
// managed to open.
func (in *initMode) useConsole() error {
	fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("open /dev/console: %w", err)
	}
	for _, std := range []int{0, 1, 2} {
		if err := unix.Dup3(fd, std, 0); err != nil {
			return fmt.Errorf("dup /dev/console: %w", err)
		}
	}
	if fd > 2 {
		unix.Close(fd)
	}
	return nil
}

// LoadModules loads the kernel modules listed in listPath (one absolute
// path per line, in dependency order) and returns how many were loaded or
// already present. A missing list means no modules. A module that fails to
// load is reported through warn and skipped: the step that needs it then
// fails with a clearer message (the root device does not appear).
func LoadModules(listPath string, warn func(path string, err error)) (int, error) {
	f, err := os.Open(listPath)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read module list: %w", err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		path := strings.TrimSpace(sc.Text())
		if path == "" || strings.HasPrefix(path, "#") {
			continue
		}
		if err := loadModule(path); err != nil {
			warn(path, err)
			continue
		}
		n++
	}
	if err := sc.Err(); err != nil {
		return n, fmt.Errorf("read module list %s: %w", listPath, err)
	}
	return n, nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if err == unix.EEXIST {
		return nil // built in, or loaded already
	}
	return err
}

// waitForPath waits until path exists. There is no udev to tell us, and
// the device appears asynchronously once its driver probes.
func waitForPath(ctx context.Context, path string) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// switchRoot makes newRoot the root, as busybox switch_root does: move
// /dev, /proc and /sys into it, free the initramfs (it cannot be unmounted,
// only emptied), move newRoot onto / and chroot into it.
func switchRoot(newRoot string) error {
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		target := filepath.Join(newRoot, m)
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("switch root: %w", err)
		}
		if err := unix.Mount(m, target, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("switch root: move %s to %s: %w", m, target, err)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err == nil && (st.Type == unix.RAMFS_MAGIC || st.Type == unix.TMPFS_MAGIC) {
		var rst unix.Stat_t
		if err := unix.Stat("/", &rst); err == nil {
			removeTree("/", rst.Dev) // best effort: memory only
		}
	}
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("switch root: chdir %s: %w", newRoot, err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switch root: move %s to /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switch root: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("switch root: chdir /: %w", err)
	}
	return nil
}

// removeTree deletes dir's contents that live on device dev, not crossing
// into other mounts (the new root).
func removeTree(dir string, dev uint64) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil || st.Dev != dev {
			continue
		}
		if e.IsDir() {
			removeTree(p, dev)
			_ = unix.Rmdir(p)
			continue
		}
		_ = unix.Unlink(p)
	}
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// loopbackUp brings up lo (the kernel then gives it 127.0.0.1), which no
// one else does when the agent is PID 1.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
