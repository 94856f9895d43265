package kernel

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
)

func TestParseModinfo(t *testing.T) {
	data := []byte("license=GPL\x00depends=virtio,virtio-ring,\x00softdep=pre: crypto-crc32c foo post: bar\x00" +
		"alias=crypto-crc32c\x00alias=pci:v00001AF4d*\x00name=net-failover\x00vermagic=6.1.0-9-amd64 SMP preempt\x00\x00\x00junk\x00")
	got := ParseModinfo(data)
	want := Modinfo{
		Name:     "net_failover",
		Depends:  []string{"virtio", "virtio_ring"},
		SoftPre:  []string{"crypto_crc32c", "foo"},
		SoftPost: []string{"bar"},
		Aliases:  []string{"crypto-crc32c", "pci:v00001AF4d*"},
		Vermagic: "6.1.0-9-amd64 SMP preempt",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseModinfo =\n%+v\nwant\n%+v", got, want)
	}
	if got.Release() != "6.1.0-9-amd64" {
		t.Errorf("Release = %q", got.Release())
	}
	if mi := ParseModinfo([]byte("depends=\x00softdep=post: x")); mi.Depends != nil || mi.SoftPre != nil || len(mi.SoftPost) != 1 {
		t.Errorf("empty depends / post-only softdep: %+v", mi)
	}
}

func TestReadModinfoELF(t *testing.T) {
	mi, err := ReadModinfo(bytes.NewReader(fakeModuleELF(t, "name=ext4", "depends=jbd2,mbcache", "softdep=pre: crypto-crc32c")))
	if err != nil {
		t.Fatal(err)
	}
	if mi.Name != "ext4" || !reflect.DeepEqual(mi.Depends, []string{"jbd2", "mbcache"}) || !reflect.DeepEqual(mi.SoftPre, []string{"crypto_crc32c"}) {
		t.Errorf("got %+v", mi)
	}

	if _, err := ReadModinfo(bytes.NewReader([]byte("not an elf file at all, not at all"))); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Errorf("garbage: err = %v", err)
	}
	// An ELF file without .modinfo: rename the section in the string table.
	noinfo := fakeModuleELF(t, "name=x")
	noinfo = bytes.Replace(noinfo, []byte(".modinfo\x00"), []byte(".notinfo\x00"), 1)
	if _, err := ReadModinfo(bytes.NewReader(noinfo)); err == nil || !strings.Contains(err.Error(), "no .modinfo") {
		t.Errorf("no .modinfo: err = %v", err)
	}
}

func TestReadModuleFileCompressed(t *testing.T) {
	dir := t.TempDir()
	writeFakeModule(t, dir, "a.ko.xz", "name=a", "depends=b")
	mi, err := readModinfoFile(filepath.Join(dir, "a.ko.xz"))
	if err != nil || mi.Name != "a" || !reflect.DeepEqual(mi.Depends, []string{"b"}) {
		t.Fatalf("xz module: %+v, %v", mi, err)
	}
	must(t, os.WriteFile(filepath.Join(dir, "z.ko.zst"), []byte("(zstd)"), 0o644))
	if _, err := readModinfoFile(filepath.Join(dir, "z.ko.zst")); !errors.Is(err, api.ErrNotImplemented) || !strings.Contains(err.Error(), "z.ko.zst") {
		t.Errorf("zstd: err = %v, want not_implemented naming the file", err)
	}
	must(t, os.WriteFile(filepath.Join(dir, "bad.ko.xz"), []byte("not xz"), 0o644))
	if _, err := readModinfoFile(filepath.Join(dir, "bad.ko.xz")); err == nil || !strings.Contains(err.Error(), "bad.ko.xz") {
		t.Errorf("corrupt xz: err = %v", err)
	}
}

func TestNames(t *testing.T) {
	for in, want := range map[string]string{
		"crc32c-intel.ko.xz": "crc32c_intel", "ext4.ko": "ext4", "a-b_c.ko.gz": "a_b_c", "x.ko.zst": "x",
		"modules.dep": "", "ko": "", "foo.ko.bz2": "",
	} {
		if got := moduleFileName(in); got != want {
			t.Errorf("moduleFileName(%q) = %q, want %q", in, got, want)
		}
	}
	if got := uncompressedName("kernel/fs/ext4/ext4.ko.xz"); got != "kernel/fs/ext4/ext4.ko" {
		t.Errorf("uncompressedName = %q", got)
	}
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"crypto-crc32c", "crypto_crc32c", true},
		{"crypto_crc32c", "crypto-crc32c", true},
		{"crypto-crc32", "crypto-crc32c", false},
		{"pci:v00001AF4d*", "pci:v00001AF4d00001000", true},
		{"fs-[a-z]xt4", "fs-ext4", true},
	} {
		if got := aliasMatch(tc.pattern, tc.name); got != tc.want {
			t.Errorf("aliasMatch(%q, %q) = %v", tc.pattern, tc.name, got)
		}
	}
}

// memSet is an in-memory moduleSet: a dependency graph with no files.
type memSet struct {
	mods     map[string]Modinfo
	builtins map[string]bool
	aliases  map[string][]string // alias → modules
	bAliases map[string]bool     // aliases met by built-ins
}

func (m memSet) info(n string) (Modinfo, bool, error) { mi, ok := m.mods[n]; return mi, ok, nil }
func (m memSet) builtin(n string) bool                { return m.builtins[n] }
func (m memSet) describe() string                     { return "memory" }
func (m memSet) providers(n string) ([]string, bool, error) {
	return m.aliases[NormalizeName(n)], m.bAliases[NormalizeName(n)], nil
}

func graph(deps map[string]string) memSet {
	s := memSet{mods: map[string]Modinfo{}, builtins: map[string]bool{}, aliases: map[string][]string{}, bAliases: map[string]bool{}}
	for name, d := range deps {
		mi := ParseModinfo([]byte(strings.ReplaceAll(d, ";", "\x00")))
		mi.Name = name
		s.mods[name] = mi
	}
	return s
}

func TestResolveOrder(t *testing.T) {
	g := graph(map[string]string{
		"a":         "depends=c,b",
		"b":         "depends=d",
		"c":         "depends=d,builtin1",
		"d":         "depends=",
		"e":         "depends=a;softdep=pre: crypto-x post: p",
		"p":         "depends=",
		"x_1":       "alias=crypto-x",
		"x_generic": "",
		"unused":    "depends=missing",
	})
	g.builtins["builtin1"] = true
	g.aliases["crypto_x"] = []string{"x_1", "x_generic"}

	got, _, err := resolve(context.Background(), g, []string{"e", "d", "builtin1"})
	if err != nil {
		t.Fatal(err)
	}
	// e's prerequisites sorted: a (→ b → d, then c), x_generic (the generic
	// provider of crypto-x); then e; then its post-softdep p.
	want := []string{"d", "b", "c", "a", "x_generic", "e", "p"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("order = %v, want %v", got, want)
	}
	// Same input, same answer; root order matters only among independents.
	again, _, _ := resolve(context.Background(), g, []string{"e", "d", "builtin1"})
	if !reflect.DeepEqual(got, again) {
		t.Errorf("not deterministic: %v vs %v", got, again)
	}
	if got, _, _ := resolve(context.Background(), g, []string{"p", "d"}); !reflect.DeepEqual(got, []string{"p", "d"}) {
		t.Errorf("independent roots keep their order: %v", got)
	}
}

func TestResolveEveryDepFirst(t *testing.T) {
	// Property: in a bigger layered graph, each module comes after all of
	// its depends.
	deps := map[string]string{}
	for i := 0; i < 60; i++ {
		var ds []string
		for j := i + 1; j < 60; j += 7 {
			ds = append(ds, "m"+strconv.Itoa(j))
		}
		deps["m"+strconv.Itoa(i)] = "depends=" + strings.Join(ds, ",")
	}
	g := graph(deps)
	got, _, err := resolve(context.Background(), g, []string{"m0", "m3"})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, n := range got {
		if _, dup := pos[n]; dup {
			t.Fatalf("%s listed twice", n)
		}
		pos[n] = i
	}
	for _, n := range got {
		for _, d := range g.mods[n].Depends {
			if pos[d] >= pos[n] {
				t.Errorf("%s (at %d) before its dependency %s (at %d)", n, pos[n], d, pos[d])
			}
		}
	}
}

func TestResolveFailures(t *testing.T) {
	for _, tc := range []struct {
		name  string
		deps  map[string]string
		roots []string
		want  []string
	}{
		{"missing root", map[string]string{"a": ""}, []string{"nope"}, []string{`"nope"`, "neither a module", "nor built into"}},
		{"missing dependency", map[string]string{"a": "depends=b", "b": "depends=gone"}, []string{"a"}, []string{`"gone"`, "needed by b"}},
		{"cycle", map[string]string{"a": "depends=b", "b": "depends=c", "c": "depends=a"}, []string{"a"}, []string{"cycle", "a -> b -> c -> a"}},
		{"self cycle", map[string]string{"a": "depends=a"}, []string{"a"}, []string{"cycle", "a -> a"}},
		{"softdep cycle", map[string]string{"a": "softdep=pre: b", "b": "depends=a"}, []string{"a"}, []string{"cycle"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := resolve(context.Background(), graph(tc.deps), tc.roots)
			if !errors.Is(err, api.ErrBadRequest) {
				t.Fatalf("err = %v, want bad_request", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err %q does not mention %q", err, w)
				}
			}
		})
	}
	// A softdep nobody provides is skipped, as modprobe does.
	got, _, err := resolve(context.Background(), graph(map[string]string{"a": "softdep=pre: ghost post: ghost2"}), []string{"a"})
	if err != nil || !reflect.DeepEqual(got, []string{"a"}) {
		t.Errorf("unmet softdep: %v, %v", got, err)
	}
	// An alias met by a built-in needs nothing.
	g := graph(map[string]string{"a": "softdep=pre: crypto-y", "y_mod": ""})
	g.bAliases["crypto_y"] = true
	g.aliases["crypto_y"] = []string{"y_mod"}
	if got, _, _ := resolve(context.Background(), g, []string{"a"}); !reflect.DeepEqual(got, []string{"a"}) {
		t.Errorf("built-in alias: %v", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := resolve(ctx, graph(map[string]string{"a": ""}), []string{"a"}); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
}

func TestResolveModulesDir(t *testing.T) {
	_, dir := fakeKernel(t, t.TempDir())
	ctx := context.Background()
	mods, err := ResolveModules(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.Name)
		if _, err := os.Stat(filepath.Join(dir, m.File)); err != nil {
			t.Errorf("%s: file %s: %v", m.Name, m.File, err)
		}
	}
	if !reflect.DeepEqual(names, fakeKernelOrder()) {
		t.Fatalf("order:\n%v\nwant\n%v", names, fakeKernelOrder())
	}
	if mods[3].File != "kernel/drivers/block/virtio_blk.ko.xz" {
		t.Errorf("virtio_blk file %q", mods[3].File)
	}

	// With depmod's modules.alias present, aliases come from it (here it
	// names only the intel module, so that is what is picked).
	must(t, os.WriteFile(filepath.Join(dir, "modules.alias"), []byte("# Aliases\nalias crypto-crc32c crc32c_intel\n"), 0o644))
	mods, err = ResolveModules(ctx, dir, []string{"ext4"})
	if err != nil {
		t.Fatal(err)
	}
	if mods[1].Name != "crc32c_intel" {
		t.Errorf("with modules.alias: %v", mods)
	}
	// A built-in alias satisfies the softdep with no module.
	must(t, os.WriteFile(filepath.Join(dir, "modules.builtin.modinfo"),
		[]byte("crc32c_generic.alias=crypto-crc32c\x00crc32c_generic.license=GPL\x00"), 0o644))
	mods, err = ResolveModules(ctx, dir, []string{"ext4"})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		if strings.HasPrefix(m.Name, "crc32c") {
			t.Errorf("built-in crc32c still loaded: %v", m.Name)
		}
	}
	// Built-in roots are skipped; a required module nobody has fails.
	if mods, err := ResolveModules(ctx, dir, []string{"crc32", "virtio_ring"}); err != nil || len(mods) != 1 {
		t.Errorf("built-in root: %v, %v", mods, err)
	}
	if _, err := ResolveModules(ctx, dir, []string{"unrelated"}); !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), dir) {
		t.Errorf("missing dependency: %v", err)
	}
	if _, err := ResolveModules(ctx, filepath.Join(dir, "nope"), nil); err == nil {
		t.Error("missing dir resolved")
	}
}

func FuzzReadModinfo(f *testing.F) {
	f.Add(fakeModuleELF(f, "name=a", "depends=b,c", "softdep=pre: x post: y"))
	f.Add([]byte("\x7fELF"))
	f.Fuzz(func(t *testing.T, data []byte) {
		// Module files come from packages kiln did not build: reading
		// them must fail cleanly, never panic.
		mi, err := ReadModinfo(bytes.NewReader(data))
		if err != nil {
			return
		}
		for _, d := range append(append(mi.Depends, mi.SoftPre...), mi.SoftPost...) {
			if d == "" || strings.Contains(d, "-") {
				t.Fatalf("bad name %q in %+v", d, mi)
			}
		}
	})
}
