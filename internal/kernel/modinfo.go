package kernel

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/ulikunitz/xz"
)

// Modinfo is what a kernel module says about itself in its ELF .modinfo
// section: NUL-separated key=value strings written by modpost.
type Modinfo struct {
	// Name is the module's name, normalised (underscores, see NormalizeName).
	Name string
	// Depends are the modules it needs loaded first (from depends=,
	// computed by modpost from the symbols it uses).
	Depends []string
	// SoftPre and SoftPost are the softdep= names to load before and after
	// it. They may be aliases (e.g. "crypto-crc32c") rather than modules.
	SoftPre, SoftPost []string
	// Aliases are the alias= patterns the module answers to.
	Aliases []string
	// Vermagic is the kernel version string it was built for; its first
	// word is the kernel release.
	Vermagic string
}

// Release is the kernel release the module was built for.
func (m Modinfo) Release() string {
	if f := strings.Fields(m.Vermagic); len(f) > 0 {
		return f[0]
	}
	return ""
}

// NormalizeName maps a module name to the form the kernel uses: '-' and
// '_' are interchangeable in module names, the kernel stores '_'.
func NormalizeName(name string) string { return strings.ReplaceAll(name, "-", "_") }

// moduleFileName returns the module name of a file name (crc32c-intel.ko.xz
// → crc32c_intel), or "" if the file is not a module.
func moduleFileName(base string) string {
	for _, s := range []string{".ko", ".ko.xz", ".ko.gz", ".ko.zst"} {
		if strings.HasSuffix(base, s) {
			return NormalizeName(strings.TrimSuffix(base, s))
		}
	}
	return ""
}

// uncompressedName strips a compression suffix: the initramfs holds plain
// .ko files so the init needs no decompressor.
func uncompressedName(p string) string {
	for _, s := range []string{".xz", ".gz", ".zst"} {
		if strings.HasSuffix(p, ".ko"+s) {
			return strings.TrimSuffix(p, s)
		}
	}
	return p
}

// readModuleFile returns the uncompressed bytes of a module file.
func readModuleFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	switch {
	case strings.HasSuffix(path, ".ko"):
	case strings.HasSuffix(path, ".ko.xz"):
		xr, err := xz.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("decompress %s: %w", path, err)
		}
		r = xr
	case strings.HasSuffix(path, ".ko.gz"):
		gr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("decompress %s: %w", path, err)
		}
		defer gr.Close()
		r = gr
	case strings.HasSuffix(path, ".ko.zst"):
		return nil, fmt.Errorf("module %s is zstd-compressed, which kiln cannot read yet; use a kernel with xz, gzip or uncompressed modules: %w", path, api.ErrNotImplemented)
	default:
		return nil, fmt.Errorf("%s is not a kernel module file: %w", path, api.ErrBadRequest)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}

// ReadModinfo reads the .modinfo section of an (uncompressed) ELF module.
func ReadModinfo(r io.ReaderAt) (Modinfo, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return Modinfo{}, fmt.Errorf("not an ELF module: %w", err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return Modinfo{}, fmt.Errorf("no .modinfo section: not a kernel module")
	}
	data, err := sec.Data()
	if err != nil {
		return Modinfo{}, fmt.Errorf("read .modinfo: %w", err)
	}
	return ParseModinfo(data), nil
}

// readModinfoFile reads the Modinfo of a module file, decompressing it if
// needed.
func readModinfoFile(path string) (Modinfo, error) {
	if strings.HasSuffix(path, ".ko") {
		// Uncompressed: debug/elf reads only the headers and the section.
		f, err := os.Open(path)
		if err != nil {
			return Modinfo{}, err
		}
		defer f.Close()
		mi, err := ReadModinfo(f)
		if err != nil {
			return Modinfo{}, fmt.Errorf("module %s: %w", path, err)
		}
		return mi, nil
	}
	data, err := readModuleFile(path)
	if err != nil {
		return Modinfo{}, err
	}
	mi, err := ReadModinfo(bytes.NewReader(data))
	if err != nil {
		return Modinfo{}, fmt.Errorf("module %s: %w", path, err)
	}
	return mi, nil
}

// ParseModinfo parses the contents of a .modinfo section. Unknown keys
// are ignored; so is anything that is not key=value (padding NULs).
func ParseModinfo(data []byte) Modinfo {
	var mi Modinfo
	for _, kv := range strings.Split(string(data), "\x00") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch k {
		case "name":
			mi.Name = NormalizeName(v)
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					mi.Depends = append(mi.Depends, NormalizeName(d))
				}
			}
		case "softdep":
			pre, post := parseSoftdep(v)
			mi.SoftPre = append(mi.SoftPre, pre...)
			mi.SoftPost = append(mi.SoftPost, post...)
		case "alias":
			mi.Aliases = append(mi.Aliases, v)
		case "vermagic":
			mi.Vermagic = v
		}
	}
	return mi
}

// parseSoftdep parses "pre: a b post: c" (either part optional, in any
// order, as modprobe.d(5) describes softdep lines).
func parseSoftdep(v string) (pre, post []string) {
	var cur *[]string
	for _, tok := range strings.Fields(v) {
		switch tok {
		case "pre:":
			cur = &pre
		case "post:":
			cur = &post
		default:
			if cur != nil {
				*cur = append(*cur, NormalizeName(tok))
			}
		}
	}
	return pre, post
}

// normalizeAlias maps '-' to '_' outside bracket expressions, as kmod
// does before comparing aliases, so "crypto-crc32c" and "crypto_crc32c"
// name the same thing while a pattern like "[a-z]" keeps its range.
func normalizeAlias(a string) string {
	b := []byte(a)
	inBracket := false
	for i, c := range b {
		switch {
		case c == '[':
			inBracket = true
		case c == ']':
			inBracket = false
		case c == '-' && !inBracket:
			b[i] = '_'
		}
	}
	return string(b)
}
