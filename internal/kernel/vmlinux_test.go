package kernel

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/testutil"
)

// TestExtractVmlinuxDebian extracts the ELF vmlinux from Debian's
// XZ-compressed (x86 BCJ) bzImage and checks it against what the real xz
// tool decompresses from the same payload, byte for byte.
func TestExtractVmlinuxDebian(t *testing.T) {
	testutil.RequireCommand(t, "xz")
	vmlinuz, _ := testutil.DebianKernel(t)
	src, err := os.ReadFile(vmlinuz)
	must(t, err)
	out, info, err := ExtractVmlinux(src)
	if err != nil {
		t.Fatal(err)
	}
	if info.Compression != "xz" || !info.PVH || info.Size != int64(len(out)) {
		t.Errorf("info = %+v, want xz with a PVH note", info)
	}
	ef, err := elf.NewFile(bytes.NewReader(out))
	must(t, err)
	// The 64-bit kernel is linked at __START_KERNEL_map + 16 MiB and its
	// entry point (startup_64) is the physical load address.
	if ef.Machine != elf.EM_X86_64 || ef.Entry != info.Entry || ef.Entry < 0x1000000 || ef.Entry >= 0x100000000 {
		t.Errorf("ELF machine %v entry %#x", ef.Machine, ef.Entry)
	}
	payload, err := bzPayload(src)
	must(t, err)
	cmd := exec.Command("xz", "-dc", "--single-stream")
	cmd.Stdin = bytes.NewReader(payload)
	want, err := cmd.Output()
	if err != nil {
		t.Fatalf("xz -dc: %v", err)
	}
	if !bytes.Equal(out, want) {
		t.Fatalf("extracted vmlinux (%d bytes) differs from xz's (%d bytes)", len(out), len(want))
	}
}

// fakeELF is an x86-64 ELF executable header followed by bytes that look
// like code: many E8/E9 opcodes, so the BCJ filter changes them.
func fakeELF(n int) []byte {
	b := make([]byte, 64+n)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1 // 64-bit, little endian, version 1
	le := binary.LittleEndian
	le.PutUint16(b[16:], uint16(elf.ET_EXEC))
	le.PutUint16(b[18:], uint16(elf.EM_X86_64))
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], 0x1000000) // entry
	le.PutUint16(b[52:], 64)        // ehsize
	le.PutUint16(b[54:], 56)        // phentsize
	le.PutUint16(b[58:], 64)        // shentsize
	r := rand.New(rand.NewSource(1))
	for i := 64; i < len(b); i++ {
		switch r.Intn(8) {
		case 0:
			b[i] = 0xe8
		case 1:
			b[i] = 0x00
		default:
			b[i] = byte(r.Intn(256))
		}
	}
	return b
}

// payloadBzImage wraps a compressed payload in a boot header the way the
// kernel build lays it out.
func payloadBzImage(payload []byte) []byte {
	const setupSects = 3
	pm := (setupSects + 1) * 512
	const payloadOff = 0x100
	img := make([]byte, pm+payloadOff+len(payload)+64)
	img[setupSectsOff] = setupSects
	copy(img[bootMagicOff:], bootMagic)
	binary.LittleEndian.PutUint16(img[bootVersionOff:], 0x20f)
	binary.LittleEndian.PutUint32(img[payloadOffsetOff:], payloadOff)
	binary.LittleEndian.PutUint32(img[payloadLengthOff:], uint32(len(payload)))
	copy(img[pm+payloadOff:], payload)
	return img
}

func withSize(b []byte, n int) []byte {
	return binary.LittleEndian.AppendUint32(append([]byte(nil), b...), uint32(n))
}

// compressWith runs a real compressor the way the kernel build does.
func compressWith(t *testing.T, in []byte, name string, args ...string) []byte {
	t.Helper()
	testutil.RequireCommand(t, name)
	cmd := exec.Command(name, args...)
	cmd.Stdin = bytes.NewReader(in)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out
}

func TestExtractVmlinuxCompressions(t *testing.T) {
	vmlinux := fakeELF(300_000)
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, 9)
	zw.Write(vmlinux)
	zw.Close()
	for _, tc := range []struct {
		name    string
		payload func(t *testing.T) []byte
	}{
		{"gzip", func(*testing.T) []byte { return gz.Bytes() }}, // gzip's ISIZE is the size
		{"xz", func(t *testing.T) []byte {
			// scripts/xz_wrap.sh
			return withSize(compressWith(t, vmlinux, "xz", "--check=crc32", "--x86", "--lzma2=dict=32MiB", "-c"), len(vmlinux))
		}},
		{"zstd", func(t *testing.T) []byte {
			return withSize(compressWith(t, vmlinux, "zstd", "-19", "-c"), len(vmlinux))
		}},
		{"bzip2", func(t *testing.T) []byte {
			return withSize(compressWith(t, vmlinux, "bzip2", "-9", "-c"), len(vmlinux))
		}},
		{"lzma", func(t *testing.T) []byte {
			return withSize(compressWith(t, vmlinux, "xz", "--format=lzma", "-9", "-c"), len(vmlinux))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, info, err := ExtractVmlinux(payloadBzImage(tc.payload(t)))
			if err != nil {
				t.Fatal(err)
			}
			if info.Compression != tc.name || info.Entry != 0x1000000 || info.PVH {
				t.Errorf("info = %+v", info)
			}
			if !bytes.Equal(out, vmlinux) {
				t.Errorf("extracted bytes differ from the original")
			}
		})
	}
}

func TestExtractVmlinuxRejects(t *testing.T) {
	vmlinux := fakeELF(10_000)
	xz := func(t *testing.T, in []byte) []byte {
		return compressWith(t, in, "xz", "--check=crc32", "--x86", "--lzma2", "-c")
	}
	for _, tc := range []struct {
		name  string
		image func(t *testing.T) []byte
		class error
	}{
		{"not a bzImage", func(*testing.T) []byte { return vmlinux }, api.ErrBadRequest},
		{"old boot protocol", func(*testing.T) []byte {
			img := payloadBzImage(withSize(xz(t, vmlinux), len(vmlinux)))
			binary.LittleEndian.PutUint16(img[bootVersionOff:], 0x206)
			return img
		}, api.ErrBadRequest},
		{"payload outside the file", func(*testing.T) []byte {
			img := payloadBzImage(withSize(xz(t, vmlinux), len(vmlinux)))
			binary.LittleEndian.PutUint32(img[payloadLengthOff:], 1<<30)
			return img
		}, api.ErrBadRequest},
		{"size mismatch", func(t *testing.T) []byte {
			return payloadBzImage(withSize(xz(t, vmlinux), len(vmlinux)+1))
		}, api.ErrBadRequest},
		{"payload not ELF", func(t *testing.T) []byte {
			junk := bytes.Repeat([]byte("not elf "), 100)
			return payloadBzImage(withSize(xz(t, junk), len(junk)))
		}, api.ErrBadRequest},
		{"corrupt xz", func(t *testing.T) []byte {
			p := withSize(xz(t, vmlinux), len(vmlinux))
			for i := 40; i < len(p)-20; i += 7 {
				p[i] ^= 0x5a
			}
			return payloadBzImage(p)
		}, api.ErrBadRequest},
		{"lz4", func(t *testing.T) []byte {
			return payloadBzImage(withSize(compressWith(t, vmlinux, "lz4", "-l", "-c"), len(vmlinux)))
		}, api.ErrNotImplemented},
		{"unknown compression", func(*testing.T) []byte {
			return payloadBzImage(withSize([]byte("ABCDEFGHIJKL"), 10))
		}, api.ErrBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ExtractVmlinux(tc.image(t))
			if !errors.Is(err, tc.class) {
				t.Fatalf("err = %v, want %v", err, tc.class)
			}
			t.Log(err)
		})
	}
}

// TestELFImageCachesBesideKernel: the vmlinux is extracted once into the
// kernel's directory; an ELF kernel is returned as is; paths outside the
// store are refused and nothing is written for a bad image.
func TestELFImageCachesBesideKernel(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := context.Background()
	vmlinux := fakeELF(50_000)
	mk := func(name string, content []byte) string {
		dir := filepath.Join(s.Dir(), name)
		must(t, os.MkdirAll(dir, 0o755))
		p := filepath.Join(dir, VmlinuzFile)
		must(t, os.WriteFile(p, content, 0o644))
		return p
	}
	bz := mk("bz", payloadBzImage(withSize(compressWith(t, vmlinux, "xz", "--check=crc32", "--x86", "--lzma2", "-c"), len(vmlinux))))
	got, err := s.ELFImage(ctx, bz)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(filepath.Dir(bz), VmlinuxFile); got != want {
		t.Fatalf("ELFImage = %s, want %s", got, want)
	}
	b, err := os.ReadFile(got)
	must(t, err)
	if !bytes.Equal(b, vmlinux) {
		t.Fatal("cached vmlinux differs")
	}
	fi1, _ := os.Stat(got)
	again, err := s.ELFImage(ctx, bz)
	if err != nil || again != got {
		t.Fatalf("second ELFImage = %s, %v", again, err)
	}
	if fi2, _ := os.Stat(got); !os.SameFile(fi1, fi2) {
		t.Error("the vmlinux was extracted twice")
	}

	elfK := mk("elf", vmlinux)
	if got, err := s.ELFImage(ctx, elfK); err != nil || got != elfK {
		t.Errorf("ELF kernel: ELFImage = %s, %v; want it unchanged", got, err)
	}

	other := filepath.Join(t.TempDir(), "x", VmlinuzFile)
	must(t, os.MkdirAll(filepath.Dir(other), 0o755))
	must(t, os.WriteFile(other, vmlinux, 0o644))
	if _, err := s.ELFImage(ctx, other); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("outside the store: err = %v, want bad request", err)
	}

	bad := mk("bad", payloadBzImage(withSize([]byte("ABCDEFGHIJKL"), 10)))
	if _, err := s.ELFImage(ctx, bad); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("bad payload: err = %v", err)
	}
	ents, _ := os.ReadDir(filepath.Dir(bad))
	if len(ents) != 1 {
		t.Errorf("a failed extraction left files: %v", ents)
	}
}
