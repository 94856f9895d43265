// Package proto is the one place where the host↔guest protocol of kiln is
// written down: the channel names and ports, the files the per-VM config cpio
// carries, the SSH requests the agent answers beyond plain SSH, and the
// per-VM configuration document. Both internal/agent (guest side) and
// internal/guest (host side) import it; it imports only the standard library.
package proto

// Control channel. The agent serves SSH on it; the host is always the SSH client.
const (
	// SerialPortName is the name of the virtio-serial port (QEMU
	// `virtserialport,name=`) that carries a yamux session when no vsock
	// exists. In the guest it appears as /dev/vportNpM, named in
	// /sys/class/virtio-ports/*/name.
	SerialPortName = "kiln.agent"
	// VsockPort is the AF_VSOCK port the agent listens on when the VM has a
	// vsock device (vhost-vsock for QEMU, hybrid vsock for Firecracker).
	VsockPort = 1024
	// SerialHello is written by the host at the start of each new connection
	// to the serial port, and echoed by the agent before yamux starts. It lets
	// the agent throw away any bytes of an earlier, dead session.
	SerialHello = "KILN-HELLO-1\n"
	// SerialReset is written by the agent each time it opens the port, before
	// it waits for a hello. A host still holding a session from before an
	// agent restart reads it as a broken yamux frame, drops the session and
	// reconnects at once (instead of after keep-alive timeouts); a host
	// waiting for the hello echo skips it like any stale byte.
	SerialReset = "KILN-RESET-1\n"
)

// Files in the initramfs. The base initramfs holds the modules; the per-VM
// cpio appended after it holds the agent (as /init) and the config.
const (
	InitPath        = "/init"
	ConfigPath      = "/kiln/vm.json"
	ModulesListPath = "/kiln/modules.list" // one module path per line, in load order
	// AgentRunPath is where the init-mode agent copies itself inside the new
	// root (a tmpfs) before switch_root, so the image's service manager can
	// start the service-mode agent without the image carrying a binary.
	AgentRunPath = "/run/kiln/kiln-agent"
	// RunConfigPath is where the init-mode agent copies the config inside
	// the new root (next to AgentRunPath); it is the default --config of
	// `kiln-agent service`.
	RunConfigPath = "/run/kiln/vm.json"
	// ImageAgentPath is where image builders inject the agent binary.
	ImageAgentPath = "/usr/local/lib/kiln/kiln-agent"
	// SystemdUnitPath is the unit image builders inject for images whose
	// init is systemd; it runs `kiln-agent service`.
	SystemdUnitPath = "/etc/systemd/system/kiln-agent.service"
)

// Extra SSH requests the agent answers.
const (
	// RequestHealth is a global request; the reply payload is a JSON Health.
	RequestHealth = "kiln-health@kiln"
	// RequestPoweroff is a global request: the agent syncs the filesystems
	// and powers the guest off. It replies before powering off.
	RequestPoweroff = "kiln-poweroff@kiln"
	// RequestPorts is a global request; the reply payload is a JSON
	// []ListeningPort: the guest's listening TCP sockets, from
	// /proc/net/tcp and /proc/net/tcp6.
	RequestPorts = "kiln-ports@kiln"
)

// Init modes for VMConfig.Init.
const (
	// InitAuto switches to the image's init when it is systemd (and the kiln
	// unit is installed), else the agent stays PID 1.
	InitAuto = "auto"
	// InitAgent keeps the agent as PID 1: it reaps orphans and serves SSH.
	InitAgent = "agent"
	// InitImage always switch_roots to the image's /sbin/init.
	InitImage = "image"
)

// VMConfig is the per-VM document at ConfigPath, written by the daemon.
type VMConfig struct {
	Name     string `json:"name"`
	Hostname string `json:"hostname"`
	// HostKey is the VM's SSH host private key in OpenSSH PEM form. The
	// daemon generated it, so it knows the fingerprint: no trust on first use.
	HostKey string `json:"host_key"`
	// AuthorizedKeys are the public keys (authorized_keys lines) allowed in.
	AuthorizedKeys []string `json:"authorized_keys"`
	// RootDevice is the guest block device holding the root filesystem.
	RootDevice string `json:"root_device"`
	RootFSType string `json:"root_fstype"`
	Init       string `json:"init"`
	// Channel is "serial" or "vsock": which control channel to serve.
	Channel string `json:"channel"`
	// Env is added to every command's environment.
	Env []string `json:"env,omitempty"`
	// WorkDir is the directory commands and shells start in (an OCI
	// image's WorkingDir); empty, or missing in the guest, means $HOME.
	WorkDir string `json:"workdir,omitempty"`
	// Network, when set, configures the guest's NIC; the init-mode agent
	// applies it through netlink (no network tools needed in the image).
	Network *NetworkConfig `json:"network,omitempty"`
}

// NetworkConfig is a guest NIC's configuration.
type NetworkConfig struct {
	MAC     string   `json:"mac"`               // which NIC
	Address string   `json:"address"`           // CIDR, e.g. 10.231.0.2/24
	Gateway string   `json:"gateway,omitempty"` // default route
	DNS     []string `json:"dns,omitempty"`     // nameservers for /etc/resolv.conf
	Search  []string `json:"search,omitempty"`  // search domains
}

// Health is the reply to RequestHealth.
type Health struct {
	Version  string  `json:"version"`
	Hostname string  `json:"hostname"`
	Kernel   string  `json:"kernel"`
	PID1     string  `json:"pid1"` // "kiln-agent" or the image init's name
	Uptime   float64 `json:"uptime_seconds"`
}

// ListeningPort is one listening TCP socket of the guest (RequestPorts).
type ListeningPort struct {
	Proto   string `json:"proto"`             // "tcp" or "tcp6"
	Address string `json:"address"`           // bound address: 0.0.0.0, ::, 127.0.0.1, ...
	Port    int    `json:"port"`              // bound port
	Process string `json:"process,omitempty"` // the owning process's comm, when found
	PID     int    `json:"pid,omitempty"`
}
