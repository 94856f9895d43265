package kernel

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz/lzma"

	"github.com/kilnvm/kiln/internal/api"
)

// VmlinuxFile is the ELF vmlinux extracted from a bzImage, cached beside
// VmlinuzFile in a kernel's directory by Store.ELFImage.
const VmlinuxFile = "vmlinux"

// More of the x86 boot protocol (Documentation/arch/x86/boot.rst).
const (
	setupSectsOff    = 0x1f1 // number of 512-byte setup sectors (0 means 4)
	payloadOffsetOff = 0x248 // protocol ≥ 2.08: payload offset from the protected-mode code
	payloadLengthOff = 0x24c // protocol ≥ 2.08: payload length
	minPayloadProto  = 0x208
)

// maxVmlinux bounds what extraction will produce: no real kernel comes near it, and
// a crafted payload must not exhaust memory.
const maxVmlinux = 1 << 30

// VmlinuxInfo describes an extracted ELF vmlinux.
type VmlinuxInfo struct {
	// Compression is the payload's format: "gzip", "xz", "zstd", "bzip2", "lzma".
	Compression string
	Size        int64
	Entry       uint64
	// PVH reports a XEN_ELFNOTE_PHYS32_ENTRY note: QEMU boots such a vmlinux
	// directly (PVH); Firecracker needs no note.
	PVH bool
}

// ExtractVmlinux decompresses the ELF vmlinux inside the bzImage src: the
// boot header's payload_offset and payload_length locate the compressed
// kernel, whose magic names the decompressor. The result is checked to be
// an x86-64 ELF executable whose length matches the size the kernel build
// appends to the payload. A file that is not such a bzImage is
// api.ErrBadRequest; an lz4 or lzo payload is api.ErrNotImplemented.
func ExtractVmlinux(src []byte) ([]byte, VmlinuxInfo, error) {
	var info VmlinuxInfo
	payload, err := bzPayload(src)
	if err != nil {
		return nil, info, err
	}
	if len(payload) < 8 {
		return nil, info, api.Errorf(api.ErrBadRequest, "bzImage payload is only %d bytes", len(payload))
	}
	// Every compressor's output ends with the uncompressed size (gzip's
	// ISIZE; the kernel's size_append for the others).
	want := binary.LittleEndian.Uint32(payload[len(payload)-4:])
	var out []byte
	switch {
	case bytes.HasPrefix(payload, []byte{0x1f, 0x8b}):
		info.Compression = "gzip"
		zr, err := gzip.NewReader(bytes.NewReader(payload))
		if err == nil {
			zr.Multistream(false)
			out, err = readAllMax(zr)
		}
		if err != nil {
			return nil, info, fmt.Errorf("gunzip bzImage payload: %w: %w", err, api.ErrBadRequest)
		}
	case bytes.HasPrefix(payload, []byte("\xfd7zXZ\x00")):
		info.Compression = "xz"
		if out, err = unxzKernel(payload); err != nil {
			return nil, info, fmt.Errorf("unxz bzImage payload: %w: %w", err, api.ErrBadRequest)
		}
	case bytes.HasPrefix(payload, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		info.Compression = "zstd"
		zr, err := zstd.NewReader(bytes.NewReader(payload[:len(payload)-4]), zstd.WithDecoderMaxMemory(maxVmlinux))
		if err == nil {
			out, err = readAllMax(zr)
			zr.Close()
		}
		if err != nil {
			return nil, info, fmt.Errorf("unzstd bzImage payload: %w: %w", err, api.ErrBadRequest)
		}
	case bytes.HasPrefix(payload, []byte("BZh")):
		info.Compression = "bzip2"
		if out, err = readAllMax(bzip2.NewReader(bytes.NewReader(payload[:len(payload)-4]))); err != nil {
			return nil, info, fmt.Errorf("bunzip2 bzImage payload: %w: %w", err, api.ErrBadRequest)
		}
	case bytes.HasPrefix(payload, []byte{0x5d, 0x00, 0x00}):
		info.Compression = "lzma"
		lr, err := lzma.NewReader(bytes.NewReader(payload[:len(payload)-4]))
		if err == nil {
			out, err = readAllMax(lr)
		}
		if err != nil {
			return nil, info, fmt.Errorf("unlzma bzImage payload: %w: %w", err, api.ErrBadRequest)
		}
	case bytes.HasPrefix(payload, []byte{0x02, 0x21, 0x4c, 0x18}):
		return nil, info, api.Errorf(api.ErrNotImplemented, "bzImage payload is lz4-compressed, which kiln cannot extract; supply an ELF vmlinux")
	case bytes.HasPrefix(payload, []byte{0x89, 'L', 'Z', 'O'}):
		return nil, info, api.Errorf(api.ErrNotImplemented, "bzImage payload is lzo-compressed, which kiln cannot extract; supply an ELF vmlinux")
	default:
		return nil, info, api.Errorf(api.ErrBadRequest, "bzImage payload has an unknown compression (magic % x)", payload[:4])
	}
	if uint32(len(out)) != want {
		return nil, info, api.Errorf(api.ErrBadRequest, "extracted vmlinux is %d bytes, the bzImage says %d", len(out), want)
	}
	ef, err := elf.NewFile(bytes.NewReader(out))
	if err != nil {
		return nil, info, api.Errorf(api.ErrBadRequest, "bzImage payload (%s) is not an ELF vmlinux: %v", info.Compression, err)
	}
	defer ef.Close()
	if ef.Class != elf.ELFCLASS64 || ef.Machine != elf.EM_X86_64 || ef.Type != elf.ET_EXEC {
		return nil, info, api.Errorf(api.ErrBadRequest, "bzImage payload is a %v %v %v ELF, not an x86-64 executable", ef.Class, ef.Machine, ef.Type)
	}
	info.Size, info.Entry, info.PVH = int64(len(out)), ef.Entry, hasPVHNote(ef)
	return out, info, nil
}

// bzPayload returns the compressed kernel inside a bzImage.
func bzPayload(src []byte) ([]byte, error) {
	if len(src) < payloadLengthOff+4 || string(src[bootMagicOff:bootMagicOff+4]) != bootMagic {
		return nil, api.Errorf(api.ErrBadRequest, "not a bzImage (no \"HdrS\" boot header at 0x202)")
	}
	if v := binary.LittleEndian.Uint16(src[bootVersionOff:]); v < minPayloadProto {
		return nil, api.Errorf(api.ErrBadRequest, "bzImage boot protocol %d.%02d predates payload_offset (2.08)", v>>8, v&0xff)
	}
	sects := int(src[setupSectsOff])
	if sects == 0 {
		sects = 4
	}
	pm := (sects + 1) * 512 // the protected-mode code starts after the setup sectors
	off := int64(pm) + int64(binary.LittleEndian.Uint32(src[payloadOffsetOff:]))
	n := int64(binary.LittleEndian.Uint32(src[payloadLengthOff:]))
	if n == 0 || off+n > int64(len(src)) {
		return nil, api.Errorf(api.ErrBadRequest, "bzImage payload [%d, +%d) lies outside the %d-byte file", off, n, len(src))
	}
	return src[off : off+n], nil
}

// hasPVHNote looks for the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18).
func hasPVHNote(ef *elf.File) bool {
	for _, p := range ef.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		b, err := io.ReadAll(io.LimitReader(p.Open(), 1<<20))
		if err != nil {
			continue
		}
		for len(b) >= 12 {
			nsz, dsz, typ := binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint32(b[8:])
			name := align4(int(nsz))
			desc := align4(int(dsz))
			if 12+name+desc > len(b) || name < 0 || desc < 0 {
				break
			}
			if typ == 18 && bytes.HasPrefix(b[12:12+name], []byte("Xen\x00")) {
				return true
			}
			b = b[12+name+desc:]
		}
	}
	return false
}

func align4(n int) int { return (n + 3) &^ 3 }

func readAllMax(r io.Reader) ([]byte, error) {
	out, err := io.ReadAll(io.LimitReader(r, maxVmlinux+1))
	if err == nil && len(out) > maxVmlinux {
		err = fmt.Errorf("decompressed kernel exceeds %d bytes", maxVmlinux)
	}
	return out, err
}

// unxzKernel decodes the single-block .xz stream the kernel build writes
// (scripts/xz_wrap.sh: CRC32 check, the x86 BCJ filter, LZMA2), which the
// xz package cannot read whole because it lacks BCJ: the block header is
// parsed here, LZMA2 decoded with the lzma package, and the BCJ filter
// undone over the result.
func unxzKernel(p []byte) ([]byte, error) {
	const streamHeader = 12
	if len(p) < streamHeader+8 {
		return nil, errors.New("truncated xz stream")
	}
	b := p[streamHeader:]
	hsize := (int(b[0]) + 1) * 4
	if b[0] == 0 || hsize > len(b) {
		return nil, errors.New("bad xz block header size")
	}
	h := b[1 : hsize-4] // flags ... padding, without the size byte and CRC32
	flags := h[0]
	h = h[1:]
	nfilters := int(flags&3) + 1
	var err error
	if flags&0x40 != 0 { // compressed size present
		if _, h, err = xzVarint(h); err != nil {
			return nil, err
		}
	}
	if flags&0x80 != 0 { // uncompressed size present
		if _, h, err = xzVarint(h); err != nil {
			return nil, err
		}
	}
	bcj, dictCap := false, 0
	for i := 0; i < nfilters; i++ {
		var id, psize uint64
		if id, h, err = xzVarint(h); err != nil {
			return nil, err
		}
		if psize, h, err = xzVarint(h); err != nil {
			return nil, err
		}
		if psize > uint64(len(h)) {
			return nil, errors.New("truncated xz filter properties")
		}
		props := h[:psize]
		h = h[psize:]
		switch {
		case id == 0x04 && i < nfilters-1: // BCJ x86
			if len(props) == 4 && binary.LittleEndian.Uint32(props) != 0 {
				return nil, errors.New("xz BCJ start offset is not supported")
			}
			bcj = true
		case id == 0x21 && i == nfilters-1: // LZMA2
			if len(props) != 1 || props[0]&0x3f > 40 {
				return nil, errors.New("bad LZMA2 properties")
			}
			bits := uint(props[0] & 0x3f)
			if bits == 40 {
				dictCap = 1<<31 - 1
			} else {
				dictCap = int((2 | (bits & 1)) << (bits/2 + 11))
			}
		default:
			return nil, fmt.Errorf("xz filter 0x%x is not supported", id)
		}
	}
	if dictCap == 0 {
		return nil, errors.New("xz block has no LZMA2 filter")
	}
	if dictCap < 1<<12 {
		dictCap = 1 << 12
	}
	lr, err := lzma.Reader2Config{DictCap: dictCap}.NewReader2(bytes.NewReader(b[hsize:]))
	if err != nil {
		return nil, err
	}
	out, err := readAllMax(lr)
	if err != nil {
		return nil, err
	}
	if bcj {
		bcjX86Decode(out)
	}
	return out, nil
}

// xzVarint reads the xz format's multibyte integer.
func xzVarint(b []byte) (uint64, []byte, error) {
	var v uint64
	for i := 0; i < 9 && i < len(b); i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			return v, b[i+1:], nil
		}
	}
	return 0, nil, errors.New("bad xz integer")
}

// bcjX86Decode undoes the x86 BCJ filter in place over a whole stream
// that starts at offset 0 (a port of xz-embedded's bcj_x86, which turns
// the absolute addresses of E8/E9 call and jump operands back into
// relative ones). The last four bytes are never converted, as in xz.
func bcjX86Decode(buf []byte) {
	maskToAllowed := [8]bool{true, true, true, false, true, false, false, false}
	maskToBitNum := [8]uint32{0, 1, 2, 2, 3, 3, 3, 3}
	testMSByte := func(b byte) bool { return b == 0x00 || b == 0xff }
	if len(buf) <= 4 {
		return
	}
	size := len(buf) - 4
	prevPos := -1
	var prevMask uint32
	for i := 0; i < size; i++ {
		if buf[i]&0xfe != 0xe8 {
			continue
		}
		d := i - prevPos
		if d > 3 {
			prevMask = 0
		} else {
			prevMask = (prevMask << uint(d-1)) & 7
			if prevMask != 0 {
				b := buf[i+4-int(maskToBitNum[prevMask])]
				if !maskToAllowed[prevMask] || testMSByte(b) {
					prevPos = i
					prevMask = prevMask<<1 | 1
					continue
				}
			}
		}
		prevPos = i
		if !testMSByte(buf[i+4]) {
			prevMask = prevMask<<1 | 1
			continue
		}
		src := binary.LittleEndian.Uint32(buf[i+1:])
		var dest uint32
		for {
			dest = src - uint32(i+5)
			if prevMask == 0 {
				break
			}
			j := maskToBitNum[prevMask] * 8
			if !testMSByte(byte(dest >> (24 - j))) {
				break
			}
			src = dest ^ (1<<(32-j) - 1)
		}
		dest &= 0x01ffffff
		dest |= 0 - (dest & 0x01000000)
		binary.LittleEndian.PutUint32(buf[i+1:], dest)
		i += 4
	}
}

// ELFImage returns the path of an ELF vmlinux for the kernel image
// vmlinuz, which must be a kernel's VmlinuzFile in this store: vmlinuz
// itself when it is ELF, else VmlinuxFile beside it, extracted on first
// use (into a temporary file renamed into place, so it is complete or
// absent) and reused afterwards. Extractions are serialised by elfMu (a
// leaf lock held only around the file work), so each is built once.
func (s *Store) ELFImage(ctx context.Context, vmlinuz string) (string, error) {
	dir := filepath.Dir(vmlinuz)
	if filepath.Base(vmlinuz) != VmlinuzFile || filepath.Dir(dir) != filepath.Clean(s.dir) {
		return "", api.Errorf(api.ErrBadRequest, "%s is not a kernel image of the store %s", vmlinuz, s.dir)
	}
	format, err := DetectFormat(vmlinuz)
	if err != nil {
		return "", err
	}
	if format == FormatELF {
		return vmlinuz, nil
	}
	dst := filepath.Join(dir, VmlinuxFile)
	s.elfMu.Lock()
	defer s.elfMu.Unlock()
	if f, err := DetectFormat(dst); err == nil && f == FormatELF {
		return dst, nil
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	src, err := os.ReadFile(vmlinuz)
	if err != nil {
		return "", fmt.Errorf("read kernel image: %w", err)
	}
	out, info, err := ExtractVmlinux(src)
	if err != nil {
		return "", fmt.Errorf("extract vmlinux from %s: %w", vmlinuz, err)
	}
	// A crash mid-write leaves only the .partial file, which the next
	// extraction replaces and Remove deletes with the kernel.
	tmp := dst + ".partial"
	os.Remove(tmp)
	if _, _, err := writeFileAtomic(tmp, func(w io.Writer) error { _, err := w.Write(out); return err }); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("write %s: %w", dst, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("write %s: %w", dst, err)
	}
	syncDir(dir)
	s.logger.Info("extracted ELF vmlinux", "kernel", filepath.Base(dir), "compression", info.Compression,
		"bytes", info.Size, "entry", fmt.Sprintf("%#x", info.Entry), "pvh", info.PVH)
	return dst, nil
}
