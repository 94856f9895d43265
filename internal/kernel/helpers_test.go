package kernel

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ulikunitz/xz"
)

// fakeModuleELF returns a minimal relocatable ELF file whose only content
// is a .modinfo section holding fields ("depends=a,b"), NUL-separated as
// modpost writes them.
func fakeModuleELF(t testing.TB, fields ...string) []byte {
	t.Helper()
	modinfo := []byte(strings.Join(fields, "\x00") + "\x00")
	shstrtab := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	modOff := uint64(ehsize)
	strOff := modOff + uint64(len(modinfo))
	shOff := (strOff + uint64(len(shstrtab)) + 7) &^ 7

	var buf bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: shOff, Ehsize: ehsize, Shentsize: shentsize, Shnum: 3, Shstrndx: 2,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	must(t, binary.Write(&buf, binary.LittleEndian, hdr))
	buf.Write(modinfo)
	buf.Write(shstrtab)
	buf.Write(make([]byte, int(shOff)-buf.Len()))
	for _, sh := range []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Flags: uint64(elf.SHF_ALLOC), Off: modOff, Size: uint64(len(modinfo)), Addralign: 1},
		{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: strOff, Size: uint64(len(shstrtab)), Addralign: 1},
	} {
		must(t, binary.Write(&buf, binary.LittleEndian, sh))
	}
	return buf.Bytes()
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// writeFakeModule writes a fake module at dir/rel; a .ko.xz name is
// compressed with xz as kmod does.
func writeFakeModule(t testing.TB, dir, rel string, fields ...string) {
	t.Helper()
	data := fakeModuleELF(t, fields...)
	if strings.HasSuffix(rel, ".xz") {
		var b bytes.Buffer
		w, err := xz.NewWriter(&b)
		must(t, err)
		_, err = w.Write(data)
		must(t, err)
		must(t, w.Close())
		data = b.Bytes()
	}
	p := filepath.Join(dir, rel)
	must(t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(t, os.WriteFile(p, data, 0o644))
}

// fakeBzImage returns bytes carrying an x86 boot header whose version
// string announces release.
func fakeBzImage(release string) []byte {
	img := make([]byte, 0x1000)
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(img[0x206:], 0x020f)
	const verOff = 0x400 // the string sits at pointer+0x200
	binary.LittleEndian.PutUint16(img[0x20e:], verOff-0x200)
	copy(img[verOff:], release+" (kiln@test) #1 SMP\x00")
	return img
}

const fakeRelease = "6.1.0-kiln-test"

// fakeKernel lays out a small synthetic kernel: boot/vmlinuz-<release>
// and lib/modules/<release> with modules shaped like Debian's (same
// dependency structure, fake contents), under root. It returns the image
// and the modules dir.
func fakeKernel(t testing.TB, root string) (vmlinuz, modulesDir string) {
	t.Helper()
	vm := "vermagic=" + fakeRelease + " SMP preempt mod_unload modversions"
	modulesDir = filepath.Join(root, "lib", "modules", fakeRelease)
	for _, m := range []struct {
		rel    string
		fields []string
	}{
		{"kernel/drivers/virtio/virtio_ring.ko", []string{"name=virtio_ring", "depends="}},
		{"kernel/drivers/virtio/virtio.ko", []string{"name=virtio", "depends=virtio_ring"}},
		{"kernel/drivers/virtio/virtio_mmio.ko", []string{"name=virtio_mmio", "depends=virtio,virtio_ring"}},
		{"kernel/drivers/block/virtio_blk.ko.xz", []string{"name=virtio_blk", "depends=virtio,virtio_ring"}},
		{"kernel/drivers/net/virtio_net.ko", []string{"name=virtio_net", "depends=virtio_ring,virtio,net_failover"}},
		{"kernel/drivers/net/net_failover.ko", []string{"name=net_failover", "depends=failover"}},
		{"kernel/net/core/failover.ko", []string{"name=failover", "depends="}},
		{"kernel/drivers/char/virtio_console.ko", []string{"name=virtio_console", "depends=virtio,virtio_ring"}},
		{"kernel/fs/ext4/ext4.ko", []string{"name=ext4", "depends=jbd2,mbcache,crc16", "softdep=pre: crypto-crc32c"}},
		{"kernel/fs/jbd2/jbd2.ko", []string{"name=jbd2", "depends=", "softdep=pre: crypto-crc32c"}},
		{"kernel/fs/mbcache.ko", []string{"name=mbcache", "depends="}},
		{"kernel/lib/crc16.ko", []string{"name=crc16", "depends="}},
		{"kernel/crypto/crc32c_generic.ko", []string{"name=crc32c_generic", "depends=", "alias=crypto-crc32c", "alias=crc32c"}},
		{"kernel/arch/x86/crypto/crc32c-intel.ko", []string{"name=crc32c_intel", "depends=", "alias=crypto-crc32c", "alias=crc32c"}},
		{"kernel/net/vmw_vsock/vsock.ko", []string{"name=vsock", "depends="}},
		{"kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko", []string{"name=vmw_vsock_virtio_transport_common", "depends=vsock"}},
		{"kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko", []string{"name=vmw_vsock_virtio_transport", "depends=virtio,vmw_vsock_virtio_transport_common,virtio_ring,vsock"}},
		{"kernel/drivers/unrelated/unrelated.ko", []string{"name=unrelated", "depends=nowhere"}},
	} {
		writeFakeModule(t, modulesDir, m.rel, append(m.fields, vm)...)
	}
	must(t, os.WriteFile(filepath.Join(modulesDir, "modules.builtin"), []byte("kernel/lib/crc32.ko\n"), 0o644))
	vmlinuz = filepath.Join(root, "boot", "vmlinuz-"+fakeRelease)
	must(t, os.MkdirAll(filepath.Dir(vmlinuz), 0o755))
	must(t, os.WriteFile(vmlinuz, fakeBzImage(fakeRelease), 0o644))
	return vmlinuz, modulesDir
}

// fakeKernelOrder is the load order resolution must give for fakeKernel
// with the default roots.
func fakeKernelOrder() []string {
	return []string{
		"virtio_ring", "virtio", "virtio_mmio", "virtio_blk",
		"failover", "net_failover", "virtio_net", "virtio_console",
		"crc16", "crc32c_generic", "jbd2", "mbcache", "ext4",
		"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport",
	}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// storeEntries lists the store directory, hidden entries included, so
// tests can assert a failure left nothing behind.
func storeEntries(t testing.TB, s *Store) []string {
	t.Helper()
	ents, err := os.ReadDir(s.Dir())
	if os.IsNotExist(err) {
		return nil
	}
	must(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}
