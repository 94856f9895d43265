package cli

import (
	"errors"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
)

func TestParseForwardSpec(t *testing.T) {
	for spec, want := range map[string]api.ForwardRequest{
		"8080":    {HostPort: 8080, GuestPort: 8080},
		"3000:80": {HostPort: 3000, GuestPort: 80},
		"0:22":    {HostPort: 0, GuestPort: 22},
		"65535:1": {HostPort: 65535, GuestPort: 1},
	} {
		got, err := parseForwardSpec(spec)
		if err != nil || got != want {
			t.Errorf("%q: %+v, %v; want %+v", spec, got, err, want)
		}
	}
	for _, spec := range []string{"", "0", "http", "80:", ":80", "80:0", "70000:80", "80:70000", "-1:80", "1:2:3"} {
		if _, err := parseForwardSpec(spec); !errors.Is(err, api.ErrBadRequest) {
			t.Errorf("%q: %v, want bad_request", spec, err)
		}
	}
}
