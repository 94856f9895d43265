package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"math"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/kilnvm/kiln/internal/api"
)

const (
	// maxZstdWindow bounds the memory a zstd stream can make its decoder
	// use (its window): 128 MiB, the zstd CLI's own default limit and the
	// largest window of `zstd --ultra -22` or `--long`.
	maxZstdWindow = 128 << 20
	// entryOverhead is the decompressed bytes allowed per tar entry
	// besides file content: headers, PAX records, padding.
	entryOverhead = 4 << 10
	// maxTrailer is how much of a compressed layer past the end of its tar
	// stream is decompressed (tar padding); the digest check covers the
	// compressed bytes beyond it.
	maxTrailer = 1 << 20
)

// decompressLimit is how many bytes a compressed archive may inflate to
// under lim: its file content, a header allowance per entry and a
// trailer. Going past it is a decompression bomb, refused as bad input.
func decompressLimit(lim Limits) int64 {
	l := lim.withDefaults()
	if l.MaxTotalSize > math.MaxInt64/2 || int64(l.MaxEntries) > math.MaxInt64/4/entryOverhead {
		return math.MaxInt64
	}
	return l.MaxTotalSize + int64(l.MaxEntries)*entryOverhead + maxTrailer
}

// decompress sniffs r and returns a reader of the tar stream inside it:
// gzip, xz and zstd are unpacked, anything else is passed through as plain
// tar (the tar reader then judges it). Formats kiln recognises but cannot
// read are refused by name. A compressed stream that is malformed or
// inflates past decompressLimit(lim) fails with api.ErrBadRequest; errors
// of r itself are returned as they are. The caller closes the reader
// (which does not close r).
func decompress(r io.Reader, lim Limits) (io.ReadCloser, error) {
	src := &sourceReader{r: r}
	br := bufio.NewReaderSize(src, 64<<10)
	magic, err := br.Peek(6)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("read archive: %w", err)
	}
	d := &decoded{src: src, max: decompressLimit(lim), close: func() {}}
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, d.fail("read gzip header", err)
		}
		d.r, d.format = zr, "gzip"
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		zr, err := xz.NewReader(br)
		if err != nil {
			return nil, d.fail("read xz header", err)
		}
		d.r, d.format = zr, "xz"
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		// A synchronous decoder (no goroutines) with a bounded window: a
		// hostile frame header cannot make it allocate more.
		zr, err := zstd.NewReader(br,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(maxZstdWindow),
			zstd.WithDecoderMaxMemory(maxZstdWindow))
		if err != nil {
			return nil, d.fail("read zstd header", err)
		}
		d.r, d.format, d.close = zr, "zstd", zr.Close
	case bytes.HasPrefix(magic, []byte("BZh")):
		return nil, fmt.Errorf("archive is bzip2-compressed, which kiln cannot read; use gzip, xz, zstd or plain tar: %w", api.ErrBadRequest)
	default:
		return io.NopCloser(br), nil
	}
	return d, nil
}

// decoded is a decompressor's output, counted against a limit, with its
// failures classed: an error of the source is returned as it is, any
// other is a malformed stream (api.ErrBadRequest).
type decoded struct {
	r      io.Reader
	src    *sourceReader
	format string
	n, max int64
	close  func()
}

func (d *decoded) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	d.n += int64(n)
	if d.n > d.max {
		return n, fmt.Errorf("%s archive inflates to more than %d bytes, over the limit: %w", d.format, d.max, api.ErrBadRequest)
	}
	if err != nil && err != io.EOF {
		return n, d.fail(fmt.Sprintf("read %s stream", d.format), err)
	}
	return n, err
}

func (d *decoded) fail(what string, err error) error {
	if d.src.err != nil {
		return fmt.Errorf("%s: %w", what, d.src.err)
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%s: %v: %w", what, err, api.ErrBadRequest)
}

func (d *decoded) Close() error {
	d.close()
	return nil
}
