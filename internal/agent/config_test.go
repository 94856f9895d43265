package agent

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/api"
)

func testKeys(t *testing.T) (hostPEM, authorized string) {
	t.Helper()
	_, priv, err := ed25519Key()
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return string(pemEncode(block)), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
}

func validConfig(t *testing.T) map[string]any {
	host, auth := testKeys(t)
	return map[string]any{
		"name": "box", "hostname": "box", "host_key": host,
		"authorized_keys": []string{auth}, "root_device": "/dev/vda",
	}
}

func TestParseConfigDefaults(t *testing.T) {
	b, _ := json.Marshal(validConfig(t))
	cfg, err := ParseConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Channel != ChannelSerial || cfg.Init != proto.InitAuto || cfg.RootFSType != "ext4" {
		t.Errorf("defaults: channel %q init %q fstype %q", cfg.Channel, cfg.Init, cfg.RootFSType)
	}
	if err := checkInitConfig(cfg); err != nil {
		t.Errorf("init check: %v", err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(m map[string]any)
		raw  string
		want string
	}{
		{name: "not json", raw: "{", want: "decode JSON"},
		{name: "wrong type", raw: `{"authorized_keys":"x"}`, want: "decode JSON"},
		{name: "no host key", edit: func(m map[string]any) { delete(m, "host_key") }, want: "host_key is empty"},
		{name: "bad host key", edit: func(m map[string]any) { m["host_key"] = "-----BEGIN X-----" }, want: "host_key:"},
		{name: "no keys", edit: func(m map[string]any) { m["authorized_keys"] = []string{} }, want: "authorized_keys is empty"},
		{name: "bad key", edit: func(m map[string]any) { m["authorized_keys"] = []string{"ssh-ed25519 @@"} }, want: "authorized_keys[0]"},
		{name: "channel", edit: func(m map[string]any) { m["channel"] = "carrier-pigeon" }, want: `channel "carrier-pigeon"`},
		{name: "init", edit: func(m map[string]any) { m["init"] = "sysv" }, want: `init "sysv"`},
		{name: "hostname", edit: func(m map[string]any) { m["hostname"] = "a b/c" }, want: `hostname "a b/c"`},
		{name: "root device", edit: func(m map[string]any) { m["root_device"] = "vda" }, want: `root_device "vda"`},
		{name: "env", edit: func(m map[string]any) { m["env"] = []string{"=x"} }, want: `env entry "=x"`},
		{name: "workdir", edit: func(m map[string]any) { m["workdir"] = "srv" }, want: `workdir "srv"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := []byte(tc.raw)
			if tc.edit != nil {
				m := validConfig(t)
				tc.edit(m)
				raw, _ = json.Marshal(m)
			}
			_, err := ParseConfig(raw)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, api.ErrBadRequest) {
				t.Errorf("err %v, want bad request containing %q", err, tc.want)
			}
		})
	}
	// Several problems are reported together.
	_, err := ParseConfig([]byte(`{"channel":"x"}`))
	if err == nil || !strings.Contains(err.Error(), "host_key is empty") || !strings.Contains(err.Error(), `channel "x"`) {
		t.Errorf("all problems: %v", err)
	}
	m := validConfig(t)
	delete(m, "root_device")
	b, _ := json.Marshal(m)
	cfg, err := ParseConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkInitConfig(cfg); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("init without root device: %v", err)
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadConfig(filepath.Join(dir, "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	p := filepath.Join(dir, "vm.json")
	os.WriteFile(p, []byte(`{"host_key":""}`), 0o600)
	if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("invalid file: error %v does not name the file", err)
	}
	b, _ := json.Marshal(validConfig(t))
	os.WriteFile(p, b, 0o600)
	cfg, err := LoadConfig(p)
	if err != nil || cfg.Hostname != "box" {
		t.Errorf("valid file: %+v %v", cfg, err)
	}
}
