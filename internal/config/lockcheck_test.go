package config

import (
	"errors"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
)

// KILN_LOCKCHECK turns on the daemon's lock-order checking; it is
// environment-only, like KILN_FAILPOINT.
func TestLockCheckFromEnvironmentOnly(t *testing.T) {
	cfg, err := Load(write(t, ""), nil)
	if err != nil || cfg.LockCheck {
		t.Fatalf("default: lockcheck %v, err %v", cfg.LockCheck, err)
	}
	cfg, err = Load(write(t, ""), []string{"KILN_LOCKCHECK=1"})
	if err != nil || !cfg.LockCheck {
		t.Fatalf("KILN_LOCKCHECK=1: lockcheck %v, err %v", cfg.LockCheck, err)
	}
	if _, err := Load(write(t, ""), []string{"KILN_LOCKCHECK=yes please"}); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("KILN_LOCKCHECK=yes please: err %v, want bad_request", err)
	}
	if _, err := Load(write(t, "lock_check = true\n"), nil); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("lock_check in a file: err %v, want an unknown-key error", err)
	}
}
