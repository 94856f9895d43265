package daemon

import "testing"

func TestGuestCmdline(t *testing.T) {
	for extra, want := range map[string]string{
		"":              "console=ttyS0 reboot=k panic=-1 quiet",
		" loglevel=7  ": "console=ttyS0 reboot=k panic=-1 quiet loglevel=7",
	} {
		if got := guestCmdline(extra); got != want {
			t.Errorf("guestCmdline(%q) = %q, want %q", extra, got, want)
		}
	}
}
