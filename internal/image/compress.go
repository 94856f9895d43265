package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"

	"github.com/ulikunitz/xz"

	"github.com/kilnvm/kiln/internal/api"
)

// decompress sniffs r and returns a reader of the tar stream inside it:
// gzip and xz are unpacked, anything else is passed through as plain tar
// (the tar reader then judges it). Formats kiln recognises but cannot read
// are refused by name.
func decompress(r io.Reader) (io.Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, err := br.Peek(6)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("read archive: %w", err)
	}
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("read gzip header: %v: %w", err, api.ErrBadRequest)
		}
		return zr, nil
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		zr, err := xz.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("read xz header: %v: %w", err, api.ErrBadRequest)
		}
		return zr, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return nil, fmt.Errorf("archive is zstd-compressed, which kiln cannot read; use gzip, xz or plain tar: %w", api.ErrBadRequest)
	case bytes.HasPrefix(magic, []byte("BZh")):
		return nil, fmt.Errorf("archive is bzip2-compressed, which kiln cannot read; use gzip, xz or plain tar: %w", api.ErrBadRequest)
	}
	return br, nil
}
