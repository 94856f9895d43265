package daemon

import (
	"context"
	"errors"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/store"
)

func TestPickNetworkMode(t *testing.T) {
	noTAP := errors.New("not running as root")
	cases := []struct {
		mode   string
		tapErr error
		want   string
	}{
		{"auto", nil, "bridge"},
		{"auto", noTAP, "user"},
		{"bridge", noTAP, "bridge"}, // an explicit bridge fails loudly at open, not silently
		{"user", nil, "user"},
	}
	for _, c := range cases {
		got, why := pickNetworkMode(c.mode, c.tapErr)
		if got != c.want || why == "" {
			t.Errorf("pickNetworkMode(%q, %v) = %q (%q), want %q with a reason", c.mode, c.tapErr, got, why, c.want)
		}
	}
}

func TestUserNetUp(t *testing.T) {
	d := &Daemon{userNet: true}
	nc, nics, err := d.userNetUp(context.Background(), store.VM{ID: "abc", Name: "box", Driver: "qemu"})
	if err != nil {
		t.Fatal(err)
	}
	if len(nics) != 1 || !nics[0].User || nics[0].TAP != "" || nics[0].MAC != nc.MAC || nc.Address != "10.0.2.15/24" || nc.Gateway != "10.0.2.2" || len(nc.DNS) != 1 || nc.DNS[0] != "10.0.2.3" {
		t.Fatalf("got %+v %+v", nc, nics)
	}
	if _, _, err := d.userNetUp(context.Background(), store.VM{ID: "abc", Name: "box", Driver: "firecracker"}); !errors.Is(err, api.ErrFailedPrecondition) {
		t.Fatalf("user-mode networking on firecracker: got %v, want a failed precondition", err)
	}
}
