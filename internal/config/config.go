// Package config loads kiln's configuration: built-in defaults, then the
// TOML file (/etc/kiln/config.toml or --config), then KILN_* environment
// variables. It is the only package that reads KILN_* variables.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/paths"
)

// DefaultPath is the system configuration file.
const DefaultPath = "/etc/kiln/config.toml"

// Config is kiln's configuration. Field comments are the reference in
// docs/configuration.md.
type Config struct {
	// StateDir, RunDir, CacheDir: see internal/paths.
	StateDir string `toml:"state_dir"`
	RunDir   string `toml:"run_dir"`
	CacheDir string `toml:"cache_dir"`
	// Socket overrides the API socket path (default RunDir/kiln.sock).
	Socket string `toml:"socket"`
	// LogLevel: debug, info, warn, error.
	LogLevel string `toml:"log_level"`
	// VMM: "auto", "qemu" or "firecracker".
	VMM string `toml:"vmm"`
	// Accel for QEMU: "auto", "kvm" or "tcg".
	Accel string `toml:"accel"`
	// QEMUBinary overrides the qemu-system-x86_64 lookup.
	QEMUBinary string `toml:"qemu_binary"`
	// QEMUUID and QEMUGID, when non-zero, are the user and group every
	// QEMU drops to once it has opened its disks, TAPs and sockets
	// (-runas, or -run-with user= on QEMU >= 9.1); 0 and 0 run it as root.
	QEMUUID int `toml:"qemu_uid"`
	QEMUGID int `toml:"qemu_gid"`
	// FirecrackerBinary overrides the firecracker lookup on PATH.
	FirecrackerBinary string `toml:"firecracker_binary"`
	// FirecrackerDriveMiBps and FirecrackerDriveIOPS limit each
	// Firecracker VM's drives, FirecrackerNetMiBps each of its network
	// interfaces (each direction), through Firecracker's rate limiters;
	// 0 is unlimited.
	FirecrackerDriveMiBps int `toml:"firecracker_drive_mibps"`
	FirecrackerDriveIOPS  int `toml:"firecracker_drive_iops"`
	FirecrackerNetMiBps   int `toml:"firecracker_net_mibps"`
	// JailerBinary, when set, launches every Firecracker through
	// Firecracker's jailer (a path or a name on PATH); empty runs
	// Firecracker directly as root.
	JailerBinary string `toml:"jailer_binary"`
	// JailerUID and JailerGID are what a jailed Firecracker runs as; both
	// must be non-zero when JailerBinary is set.
	JailerUID int `toml:"jailer_uid"`
	JailerGID int `toml:"jailer_gid"`
	// JailerChrootBase is the jailer's --chroot-base-dir; empty means
	// StateDir/jail. It must be on the filesystem of StateDir: kernels,
	// initrds and disks are hard-linked into each VM's chroot.
	JailerChrootBase string `toml:"jailer_chroot_base"`
	// JailerCgroups are cgroup v2 settings for each jailed Firecracker,
	// "file=value" (e.g. "memory.max=2147483648"); the environment
	// variable separates them with ';'.
	JailerCgroups []string `toml:"jailer_cgroups"`
	// AgentPath is the static kiln-agent binary injected into guests;
	// default: kiln-agent beside the kiln binary, then /usr/local/lib/kiln.
	AgentPath string `toml:"agent_path"`
	// DefaultImage and DefaultKernel are used when a VM names none.
	DefaultImage  string `toml:"default_image"`
	DefaultKernel string `toml:"default_kernel"`
	// ImageCatalog is a JSON file of catalog entries added to (or
	// replacing by name) the catalog built into kiln; "" for none.
	ImageCatalog string `toml:"image_catalog"`
	// VCPUs and MemoryMiB are the default VM size.
	VCPUs     int `toml:"vcpus"`
	MemoryMiB int `toml:"memory_mib"`
	// KernelCmdline is appended to kiln's own guest command line.
	KernelCmdline string `toml:"kernel_cmdline"`
	// StopTimeout is how long a graceful stop waits before escalating.
	StopTimeout Duration `toml:"stop_timeout"`
	// BootTimeout is how long create/start wait for the guest agent.
	BootTimeout Duration `toml:"boot_timeout"`
	// SocketGroup, if it exists, owns the API socket (mode 0660).
	SocketGroup string `toml:"socket_group"`
	// Network gives VMs a bridge, TAP, address, NAT and DNS name
	// (internal/network), or user-mode networking (see NetworkMode). On by
	// default; `network = false` boots VMs with no network device.
	Network bool `toml:"network"`
	// Bridge, Subnet and DNSZone configure that network.
	Bridge  string `toml:"bridge"`
	Subnet  string `toml:"subnet"`
	DNSZone string `toml:"dns_zone"`
	// NAT is the default for VMs' outbound NAT (`vm create --no-nat` opts out).
	NAT bool `toml:"nat"`
	// NetworkMode is "bridge" (TAPs on the bridge), "user" (QEMU
	// user-mode networking: no TAP, no bridge, no privileges needed) or
	// "auto": bridge when the daemon can create TAPs, else user.
	NetworkMode string `toml:"network_mode"`
	// Failpoint names a create/delete stage at which the daemon kills itself
	// with SIGKILL. Test-only: set through KILN_FAILPOINT, never in a file.
	Failpoint string `toml:"-"`
	// LockCheck makes the daemon check its lock order at every acquisition
	// and panic on an inversion (internal/lockorder). Test-only: set through
	// KILN_LOCKCHECK=1 (the e2e harness does), never in a file.
	LockCheck bool `toml:"-"`
}

// Duration is a time.Duration written as "10s" in TOML.
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Default returns the built-in configuration.
func Default() Config {
	l := paths.Default()
	return Config{
		StateDir: l.StateDir, RunDir: l.RunDir, CacheDir: l.CacheDir,
		LogLevel: "info", VMM: "auto", Accel: "auto",
		DefaultImage: "debian", DefaultKernel: "debian",
		VCPUs: 2, MemoryMiB: 1024,
		StopTimeout: Duration{10 * time.Second},
		BootTimeout: Duration{3 * time.Minute},
		SocketGroup: "kiln",
		Network:     true, Bridge: "kiln0", Subnet: "10.231.0.0/24", DNSZone: "vm", NAT: true,
		NetworkMode: "auto",
	}
}

// Load reads the configuration. path "" means DefaultPath, which may be
// absent; an explicitly named file must exist. env is the environment as
// KEY=VALUE lines (os.Environ()).
func Load(path string, env []string) (Config, error) {
	cfg := Default()
	explicit := path != ""
	if !explicit {
		path = DefaultPath
	}
	if b, err := os.ReadFile(path); err == nil {
		md, err := toml.Decode(string(b), &cfg)
		if err != nil {
			return Config{}, fmt.Errorf("config %s: %v: %w", path, err, api.ErrBadRequest)
		}
		if u := md.Undecoded(); len(u) > 0 {
			return Config{}, fmt.Errorf("config %s: unknown key %q: %w", path, u[0].String(), api.ErrBadRequest)
		}
	} else if explicit || !errors.Is(err, fs.ErrNotExist) {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	if err := cfg.applyEnv(env); err != nil {
		return Config{}, err
	}
	return cfg, cfg.Validate()
}

func (c *Config) applyEnv(env []string) error {
	strs := map[string]*string{
		"KILN_STATE_DIR": &c.StateDir, "KILN_RUN_DIR": &c.RunDir, "KILN_CACHE_DIR": &c.CacheDir,
		"KILN_SOCKET": &c.Socket, "KILN_LOG_LEVEL": &c.LogLevel, "KILN_VMM": &c.VMM,
		"KILN_ACCEL": &c.Accel, "KILN_QEMU_BINARY": &c.QEMUBinary, "KILN_AGENT_PATH": &c.AgentPath,
		"KILN_DEFAULT_IMAGE": &c.DefaultImage, "KILN_DEFAULT_KERNEL": &c.DefaultKernel, "KILN_IMAGE_CATALOG": &c.ImageCatalog,
		"KILN_KERNEL_CMDLINE": &c.KernelCmdline, "KILN_SOCKET_GROUP": &c.SocketGroup,
		"KILN_FAILPOINT": &c.Failpoint, "KILN_FIRECRACKER_BINARY": &c.FirecrackerBinary,
		"KILN_NETWORK_MODE": &c.NetworkMode, "KILN_JAILER_BINARY": &c.JailerBinary,
		"KILN_JAILER_CHROOT_BASE": &c.JailerChrootBase,
	}
	ints := map[string]*int{"KILN_VCPUS": &c.VCPUs, "KILN_MEMORY_MIB": &c.MemoryMiB,
		"KILN_JAILER_UID": &c.JailerUID, "KILN_JAILER_GID": &c.JailerGID,
		"KILN_QEMU_UID": &c.QEMUUID, "KILN_QEMU_GID": &c.QEMUGID,
		"KILN_FIRECRACKER_DRIVE_MIBPS": &c.FirecrackerDriveMiBps, "KILN_FIRECRACKER_DRIVE_IOPS": &c.FirecrackerDriveIOPS,
		"KILN_FIRECRACKER_NET_MIBPS": &c.FirecrackerNetMiBps}
	durs := map[string]*Duration{"KILN_STOP_TIMEOUT": &c.StopTimeout, "KILN_BOOT_TIMEOUT": &c.BootTimeout}
	bools := map[string]*bool{"KILN_NETWORK": &c.Network, "KILN_NAT": &c.NAT, "KILN_LOCKCHECK": &c.LockCheck}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(k, "KILN_") {
			continue
		}
		if p, ok := strs[k]; ok {
			*p = v
		} else if k == "KILN_JAILER_CGROUPS" {
			c.JailerCgroups = nil
			for _, s := range strings.Split(v, ";") {
				if s = strings.TrimSpace(s); s != "" {
					c.JailerCgroups = append(c.JailerCgroups, s)
				}
			}
		} else if p, ok := ints[k]; ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("%s=%q: want a number: %w", k, v, api.ErrBadRequest)
			}
			*p = n
		} else if p, ok := durs[k]; ok {
			if err := p.UnmarshalText([]byte(v)); err != nil {
				return fmt.Errorf("%s=%q: %v: %w", k, v, err, api.ErrBadRequest)
			}
		} else if p, ok := bools[k]; ok {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("%s=%q: want true or false: %w", k, v, api.ErrBadRequest)
			}
			*p = b
		}
	}
	return nil
}

// Validate checks values that would otherwise fail late.
func (c Config) Validate() error {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("config: "+f+": %w", append(a, api.ErrBadRequest)...)
	}
	switch c.VMM {
	case "auto", "qemu", "firecracker":
	default:
		return bad("vmm %q: want auto, qemu or firecracker", c.VMM)
	}
	switch c.Accel {
	case "auto", "kvm", "tcg":
	default:
		return bad("accel %q: want auto, kvm or tcg", c.Accel)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return bad("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	if c.VCPUs < 1 || c.VCPUs > 64 {
		return bad("vcpus %d: want 1-64", c.VCPUs)
	}
	if c.MemoryMiB < 128 {
		return bad("memory_mib %d: want at least 128", c.MemoryMiB)
	}
	switch c.NetworkMode {
	case "auto", "bridge", "user":
	default:
		return bad("network_mode %q: want auto, bridge or user", c.NetworkMode)
	}
	if c.Network {
		if _, err := netip.ParsePrefix(c.Subnet); err != nil {
			return bad("subnet %q: want an IPv4 prefix such as 10.231.0.0/24", c.Subnet)
		}
	}
	for _, d := range []string{c.StateDir, c.RunDir, c.CacheDir} {
		if d == "" || d[0] != '/' {
			return bad("directories must be absolute paths, got %q", d)
		}
	}
	if c.QEMUUID < 0 || c.QEMUGID < 0 || (c.QEMUUID == 0) != (c.QEMUGID == 0) {
		return bad("qemu_uid %d / qemu_gid %d: set both to a non-root user and group, or neither (0: QEMU runs as root)", c.QEMUUID, c.QEMUGID)
	}
	if c.FirecrackerDriveMiBps < 0 || c.FirecrackerDriveIOPS < 0 || c.FirecrackerNetMiBps < 0 {
		return bad("firecracker rate limits must not be negative (0 is unlimited)")
	}
	if c.JailerBinary != "" {
		if c.JailerUID <= 0 || c.JailerGID <= 0 {
			return bad("jailer_uid %d / jailer_gid %d: a jailed Firecracker must run as a non-root user and group", c.JailerUID, c.JailerGID)
		}
		if c.JailerChrootBase != "" && c.JailerChrootBase[0] != '/' {
			return bad("jailer_chroot_base %q: want an absolute path", c.JailerChrootBase)
		}
	} else if c.JailerUID != 0 || c.JailerGID != 0 || c.JailerChrootBase != "" || len(c.JailerCgroups) > 0 {
		return bad("jailer_uid, jailer_gid, jailer_chroot_base and jailer_cgroups need jailer_binary")
	}
	return nil
}

// ChrootBase is the jailer's chroot base: JailerChrootBase or StateDir/jail.
func (c Config) ChrootBase() string {
	if c.JailerChrootBase != "" {
		return c.JailerChrootBase
	}
	return filepath.Join(c.StateDir, "jail")
}

// Layout is the directory layout this configuration names.
func (c Config) Layout() paths.Layout {
	return paths.Layout{StateDir: c.StateDir, RunDir: c.RunDir, CacheDir: c.CacheDir}
}

// SocketPath is the API socket.
func (c Config) SocketPath() string {
	if c.Socket != "" {
		return c.Socket
	}
	return c.Layout().Socket()
}

// SlogLevel is LogLevel as a slog.Level.
func (c Config) SlogLevel() slog.Level {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.LogLevel))
	return lvl
}
