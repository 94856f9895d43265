package image

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/kilnvm/kiln/internal/api"
)

func zstdOf(t *testing.T, data []byte, opts ...zstd.EOption) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readAll(t *testing.T, data []byte, lim Limits) ([]byte, error) {
	t.Helper()
	rc, err := decompress(bytes.NewReader(data), lim)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// TestDecompressZstdBounds: a zstd stream inflating past the limits is
// refused once it gets there, as is a frame asking for a window larger
// than maxZstdWindow; concatenated frames are read whole; a failing
// source keeps its own error class.
func TestDecompressZstdBounds(t *testing.T) {
	lim := Limits{MaxTotalSize: 1 << 20, MaxEntries: 16}
	max := decompressLimit(lim)
	if want := int64(1<<20 + 16*entryOverhead + maxTrailer); max != want {
		t.Fatalf("decompressLimit = %d, want %d", max, want)
	}
	bomb := zstdOf(t, make([]byte, 64<<20))
	if len(bomb) > 64<<10 {
		t.Fatalf("64 MiB of zeros compressed to %d bytes", len(bomb))
	}
	_, err := readAll(t, bomb, lim)
	if !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), "over the limit") {
		t.Fatalf("zstd bomb: %v, want bad_request over the limit", err)
	}
	// Just under the limit is fine.
	if got, err := readAll(t, zstdOf(t, make([]byte, max)), lim); err != nil || int64(len(got)) != max {
		t.Fatalf("stream of exactly the limit: %d bytes, %v", len(got), err)
	}

	// A frame header asking for a window over maxZstdWindow is refused
	// before any large allocation.
	if _, err := readAll(t, rawZstdFrame(28, "kiln"), Limits{}); !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), "window") {
		t.Fatalf("window of 256 MiB: %v, want bad_request", err)
	}
	if got, err := readAll(t, rawZstdFrame(27, "kiln"), Limits{}); err != nil || string(got) != "kiln" {
		t.Fatalf("window of 128 MiB: %q, %v", got, err)
	}

	// Frames one after another (as `zstd -T0` and pzstd write) are one
	// stream.
	two := append(zstdOf(t, []byte("one ")), zstdOf(t, []byte("two"))...)
	if got, err := readAll(t, two, Limits{}); err != nil || string(got) != "one two" {
		t.Fatalf("two frames: %q, %v", got, err)
	}

	// A source that fails (a cancelled download) is not a malformed
	// stream.
	whole := zstdOf(t, bytes.Repeat([]byte("0123456789"), 100_000))
	rc, err := decompress(io.MultiReader(bytes.NewReader(whole[:len(whole)/2]), errReader{context.Canceled}), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadAll(rc); !errors.Is(err, context.Canceled) || errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("failing source: %v, want canceled and not bad_request", err)
	}
	// A truncated stream is malformed.
	if _, err := readAll(t, whole[:len(whole)/2], Limits{}); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("truncated stream: %v, want bad_request", err)
	}
}

// rawZstdFrame is a zstd frame with a window of 1<<windowLog bytes (and no
// content size) holding body in one raw block.
func rawZstdFrame(windowLog int, body string) []byte {
	f := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, byte(windowLog-10) << 3}
	bh := 1 | len(body)<<3 // last block, raw
	f = append(f, byte(bh), byte(bh>>8), byte(bh>>16))
	return append(f, body...)
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
