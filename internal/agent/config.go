package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/api"
)

// Channel kinds for proto.VMConfig.Channel.
const (
	ChannelSerial = "serial"
	ChannelVsock  = "vsock"
)

// LoadConfig reads and checks the per-VM config at path.
func LoadConfig(path string) (proto.VMConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return proto.VMConfig{}, fmt.Errorf("read vm config: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return proto.VMConfig{}, fmt.Errorf("vm config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig decodes a per-VM config, fills defaults (channel serial, init
// auto, root fstype ext4) and checks everything service mode needs. Errors
// wrap api.ErrBadRequest and name the field.
func ParseConfig(data []byte) (proto.VMConfig, error) {
	var cfg proto.VMConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		return cfg, fmt.Errorf("decode JSON: %v: %w", err, api.ErrBadRequest)
	}
	if cfg.Channel == "" {
		cfg.Channel = ChannelSerial
	}
	if cfg.Init == "" {
		cfg.Init = proto.InitAuto
	}
	if cfg.RootFSType == "" {
		cfg.RootFSType = "ext4"
	}
	var errs []string
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Sprintf(format, args...))
	}
	if _, err := ssh.ParsePrivateKey([]byte(cfg.HostKey)); err != nil {
		if cfg.HostKey == "" {
			bad("host_key is empty")
		} else {
			bad("host_key: %v", err)
		}
	}
	if _, err := AuthorizedKeys(cfg); err != nil {
		bad("%v", err)
	}
	switch cfg.Channel {
	case ChannelSerial, ChannelVsock:
	default:
		bad("channel %q: want %q or %q", cfg.Channel, ChannelSerial, ChannelVsock)
	}
	switch cfg.Init {
	case proto.InitAuto, proto.InitAgent, proto.InitImage:
	default:
		bad("init %q: want %q, %q or %q", cfg.Init, proto.InitAuto, proto.InitAgent, proto.InitImage)
	}
	if cfg.Hostname != "" && !validHostname(cfg.Hostname) {
		bad("hostname %q: want 1-64 letters, digits, '-' and '.'", cfg.Hostname)
	}
	if cfg.RootDevice != "" && !strings.HasPrefix(cfg.RootDevice, "/dev/") {
		bad("root_device %q: want a /dev/ path", cfg.RootDevice)
	}
	for _, kv := range cfg.Env {
		name, _, ok := strings.Cut(kv, "=")
		if !ok || name == "" || strings.ContainsRune(kv, 0) {
			bad("env entry %q: want NAME=VALUE", kv)
		}
	}
	if cfg.WorkDir != "" && (!strings.HasPrefix(cfg.WorkDir, "/") || strings.ContainsRune(cfg.WorkDir, 0)) {
		bad("workdir %q: want an absolute path", cfg.WorkDir)
	}
	errs = append(errs, checkNetwork(cfg.Network)...)
	if len(errs) > 0 {
		return cfg, fmt.Errorf("%s: %w", strings.Join(errs, "; "), api.ErrBadRequest)
	}
	return cfg, nil
}

// checkInitConfig checks what init mode needs beyond ParseConfig.
func checkInitConfig(cfg proto.VMConfig) error {
	if cfg.RootDevice == "" {
		return fmt.Errorf("root_device is empty: %w", api.ErrBadRequest)
	}
	return nil
}

// AuthorizedKeys parses cfg.AuthorizedKeys; there must be at least one.
func AuthorizedKeys(cfg proto.VMConfig) ([]ssh.PublicKey, error) {
	if len(cfg.AuthorizedKeys) == 0 {
		return nil, fmt.Errorf("authorized_keys is empty: nobody could log in")
	}
	keys := make([]ssh.PublicKey, 0, len(cfg.AuthorizedKeys))
	for i, line := range cfg.AuthorizedKeys {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("authorized_keys[%d]: %v", i, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func validHostname(h string) bool {
	if len(h) > 64 || h[0] == '-' || h[0] == '.' {
		return false
	}
	for _, c := range h {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '.':
		default:
			return false
		}
	}
	return true
}
