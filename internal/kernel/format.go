package kernel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
)

// Format is the file format of a kernel image.
type Format string

const (
	// FormatBzImage is the x86 boot protocol image (vmlinuz): what QEMU
	// -kernel and Firecracker ≥ 1.8 boot.
	FormatBzImage Format = "bzImage"
	// FormatELF is an uncompressed ELF vmlinux: what older Firecracker
	// releases need.
	FormatELF Format = "elf"
)

// x86 boot protocol (Documentation/arch/x86/boot.rst): the real-mode
// header starts at 0x1f1; "HdrS" at 0x202 marks protocol ≥ 2.00, whose
// version sits at 0x206 and the pointer to the kernel version string
// (relative to 0x200) at 0x20e.
const (
	bootMagicOff    = 0x202
	bootVersionOff  = 0x206
	kernelVerPtrOff = 0x20e
	bootMagic       = "HdrS"
)

// DetectFormat tells a bzImage from an ELF vmlinux. Anything else is an
// error wrapping api.ErrBadRequest.
func DetectFormat(path string) (Format, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fileError("kernel image", path, err)
	}
	defer f.Close()
	var hdr [0x210]byte
	n, err := io.ReadFull(f, hdr[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read kernel image %s: %w", path, err)
	}
	if n >= 4 && string(hdr[:4]) == "\x7fELF" {
		return FormatELF, nil
	}
	if n >= bootMagicOff+4 && string(hdr[bootMagicOff:bootMagicOff+4]) == bootMagic {
		return FormatBzImage, nil
	}
	return "", fmt.Errorf("kernel image %s is neither a bzImage (no \"HdrS\" boot header at 0x202) nor an ELF vmlinux: %w", path, api.ErrBadRequest)
}

// imageRelease returns the release a kernel image announces ("6.1.0-9-amd64"),
// or "" when it cannot tell. For a bzImage it reads the version string the
// boot header points to; for an ELF vmlinux it looks for the
// "Linux version " banner.
func imageRelease(path string, format Format) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fileError("kernel image", path, err)
	}
	defer f.Close()
	switch format {
	case FormatBzImage:
		var hdr [0x210]byte
		if _, err := io.ReadFull(f, hdr[:]); err != nil {
			return "", fmt.Errorf("read boot header of %s: %w", path, err)
		}
		if binary.LittleEndian.Uint16(hdr[bootVersionOff:]) < 0x200 {
			return "", nil
		}
		ptr := int64(binary.LittleEndian.Uint16(hdr[kernelVerPtrOff:]))
		if ptr == 0 {
			return "", nil
		}
		var buf [256]byte
		n, err := f.ReadAt(buf[:], ptr+0x200)
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("read version string of %s: %w", path, err)
		}
		s := buf[:n]
		if i := bytes.IndexByte(s, 0); i >= 0 {
			s = s[:i]
		}
		if fs := strings.Fields(string(s)); len(fs) > 0 {
			return fs[0], nil
		}
		return "", nil
	case FormatELF:
		// The banner is "Linux version 6.1.0-9-amd64 (builder@host) ...".
		const banner = "Linux version "
		var carry []byte
		buf := make([]byte, 1<<20)
		for {
			n, err := io.ReadFull(f, buf)
			if err == io.ErrUnexpectedEOF {
				err = io.EOF
			}
			chunk := append(carry, buf[:n]...)
			// Format strings such as "Linux version %s" come before the
			// banner itself; isRelease skips them.
			for off := 0; ; {
				i := bytes.Index(chunk[off:], []byte(banner))
				if i < 0 || (err == nil && len(chunk)-(off+i) <= len(banner)+64) {
					break
				}
				rest := chunk[off+i+len(banner):]
				if len(rest) > 64 {
					rest = rest[:64]
				}
				if fs := strings.Fields(string(rest)); len(fs) > 0 && isRelease(fs[0]) {
					return fs[0], nil
				}
				off += i + len(banner)
			}
			// Keep a tail so a banner split across reads is still found.
			if len(chunk) > len(banner)+64 {
				carry = append([]byte(nil), chunk[len(chunk)-(len(banner)+64):]...)
			} else {
				carry = chunk
			}
			if err == io.EOF {
				return "", nil
			}
			if err != nil {
				return "", fmt.Errorf("read %s: %w", path, err)
			}
		}
	}
	return "", nil
}

// isRelease is a sanity check on a release string found by scanning.
func isRelease(s string) bool {
	if s == "" || s[0] < '0' || s[0] > '9' {
		return false
	}
	for _, c := range s {
		if c < 0x21 || c > 0x7e || c == '%' {
			return false
		}
	}
	return true
}

// fileError describes a missing or unreadable input file. A path the
// caller gave that does not exist is the caller's mistake.
func fileError(what, path string, err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s %s does not exist: %w", what, path, api.ErrBadRequest)
	}
	return fmt.Errorf("%s %s: %w", what, path, err)
}
