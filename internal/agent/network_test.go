package agent

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
)

func TestParseConfigNetwork(t *testing.T) {
	good := map[string]any{"mac": "52:54:00:01:02:03", "address": "10.231.0.2/24", "gateway": "10.231.0.1", "dns": []string{"10.231.0.1"}, "search": []string{"vm"}}
	m := validConfig(t)
	m["network"] = good
	b, _ := json.Marshal(m)
	cfg, err := ParseConfig(b)
	if err != nil || cfg.Network == nil || cfg.Network.Address != "10.231.0.2/24" {
		t.Fatalf("valid network: %+v, %v", cfg.Network, err)
	}
	for field, bad := range map[string]any{"mac": "52:54:00", "address": "10.231.0.2", "gateway": "gw", "dns": []string{"x"}} {
		n := map[string]any{}
		for k, v := range good {
			n[k] = v
		}
		n[field] = bad
		m["network"] = n
		b, _ := json.Marshal(m)
		if _, err := ParseConfig(b); !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), "network."+field) {
			t.Errorf("bad %s: got %v, want bad_request naming network.%s", field, err, field)
		}
	}
}
