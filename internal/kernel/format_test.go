package kernel

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
)

func TestDetectFormat(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		must(t, os.WriteFile(p, data, 0o644))
		return p
	}
	bz := write("bzImage", fakeBzImage("6.1.0-test"))
	elfImg := write("vmlinux", append(fakeModuleELF(t, "x=y"), []byte("......Linux version %s (%s)\x00....Linux version 6.9.1-elf (b@h) #1 SMP\x00"+strings.Repeat("\x00", 100))...))

	if f, err := DetectFormat(bz); err != nil || f != FormatBzImage {
		t.Errorf("bzImage: %v, %v", f, err)
	}
	if f, err := DetectFormat(elfImg); err != nil || f != FormatELF {
		t.Errorf("ELF: %v, %v", f, err)
	}
	if r, err := imageRelease(bz, FormatBzImage); err != nil || r != "6.1.0-test" {
		t.Errorf("bzImage release: %q, %v", r, err)
	}
	// The ELF banner scan skips the format string and finds the banner.
	if r, err := imageRelease(elfImg, FormatELF); err != nil || r != "6.9.1-elf" {
		t.Errorf("ELF release: %q, %v", r, err)
	}
	// A boot protocol without a version pointer gives no release, not an error.
	old := fakeBzImage("x")
	old[0x20e], old[0x20f] = 0, 0
	if r, err := imageRelease(write("old", old), FormatBzImage); err != nil || r != "" {
		t.Errorf("no version pointer: %q, %v", r, err)
	}

	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"short", []byte("MZ")},
		{"text", []byte(strings.Repeat("#!/bin/sh\necho hi\n", 100))},
		{"magic off by one", func() []byte { b := fakeBzImage("x"); copy(b[0x202:], "\x00HdrS"); return b }()},
	} {
		p := write(tc.name, tc.data)
		f, err := DetectFormat(p)
		if !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v, %v; want bad_request naming the file", tc.name, f, err)
		}
	}
	if _, err := DetectFormat(filepath.Join(dir, "missing")); !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing: %v", err)
	}
}
