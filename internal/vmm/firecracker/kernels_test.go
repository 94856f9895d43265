package firecracker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/kernel"
)

func TestAcceptsKernel(t *testing.T) {
	for _, tc := range []struct {
		r      Release
		f      kernel.Format
		accept bool
	}{
		{Release{1, 8, 0}, kernel.FormatELF, true},
		{Release{1, 8, 0}, kernel.FormatBzImage, false},
		{Release{1, 16, 1}, kernel.FormatBzImage, false},
		{Release{1, 16, 1}, kernel.FormatELF, true},
		{Release{1, 17, 0}, kernel.FormatBzImage, true},
		{Release{1, 17, 0}, kernel.FormatELF, true},
		{Release{2, 0, 0}, kernel.FormatBzImage, true},
	} {
		if got := AcceptsKernel(tc.r, tc.f); got != tc.accept {
			t.Errorf("AcceptsKernel(%s, %s) = %v, want %v", tc.r, tc.f, got, tc.accept)
		}
	}
	for _, e := range KernelFormats() {
		if e.Source == "" {
			t.Errorf("entry from %s has no source", e.From)
		}
	}
}

// bootKernel hands an ELF-only release the extracted vmlinux, a
// bzImage-capable one the bzImage, and refuses what cannot boot.
func TestBootKernelChoice(t *testing.T) {
	dir := t.TempDir()
	elfK := filepath.Join(dir, "vmlinux")
	bz := filepath.Join(dir, "vmlinuz")
	junk := filepath.Join(dir, "junk")
	hdr := make([]byte, 0x300)
	copy(hdr[0x202:], "HdrS")
	for p, b := range map[string][]byte{elfK: []byte("\x7fELF...."), bz: hdr, junk: []byte("junk")} {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var asked []string
	extract := func(_ context.Context, p string) (string, error) {
		asked = append(asked, p)
		return elfK, nil
	}
	old := writeScript(t, `echo "Firecracker v1.16.1"`)
	newer := writeScript(t, `echo "Firecracker v1.17.0"`)
	ctx := context.Background()
	for _, tc := range []struct {
		name, bin, kernel string
		extract           func(context.Context, string) (string, error)
		want              string
		class             error
		extracted         bool
	}{
		{"1.16 bzImage extracts", old, bz, extract, elfK, nil, true},
		{"1.16 ELF as is", old, elfK, extract, elfK, nil, false},
		{"1.17 bzImage as is", newer, bz, extract, bz, nil, false},
		{"1.16 bzImage without extractor", old, bz, nil, "", api.ErrFailedPrecondition, false},
		{"junk kernel", old, junk, extract, "", api.ErrBadRequest, false},
		{"extraction fails", old, bz, func(context.Context, string) (string, error) {
			return "", api.Errorf(api.ErrNotImplemented, "lz4")
		}, "", api.ErrNotImplemented, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			asked = nil
			d := New(Config{Binary: tc.bin, ELFKernel: tc.extract})
			got, err := d.bootKernel(ctx, "box", tc.kernel)
			if tc.class != nil {
				if !errors.Is(err, tc.class) {
					t.Fatalf("err = %v, want %v", err, tc.class)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("bootKernel = %q, %v; want %q", got, err, tc.want)
			}
			if (len(asked) == 1) != tc.extracted {
				t.Errorf("extractor called %v", asked)
			}
		})
	}
}
