package kernel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/system"
	"github.com/kilnvm/kiln/internal/testutil"
)

// testTime is the injected clock's only reading.
func testTime() time.Time { return time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC) }

func newTestStore(t testing.TB, runner system.Runner) *Store {
	t.Helper()
	if runner == nil {
		runner = system.ExecRunner{}
	}
	s := NewStore(filepath.Join(t.TempDir(), "kernels"), runner, slog.New(slog.DiscardHandler))
	s.Now = testTime
	return s
}

// extractCpio unpacks an archive with GNU cpio into a new directory.
func extractCpio(t testing.TB, archive string) string {
	t.Helper()
	testutil.RequireCommand(t, "cpio")
	f, err := os.Open(archive)
	must(t, err)
	defer f.Close()
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-i", "-d", "-m", "--no-absolute-filenames", "--quiet")
	cmd.Dir, cmd.Stdin = dir, f
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i %s: %v: %s", archive, err, out)
	}
	return dir
}

func sha(t testing.TB, path string) string {
	data, err := os.ReadFile(path)
	must(t, err)
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// checkKernel asserts the files of an imported kernel match its metadata
// and that its initramfs holds exactly the listed modules.
func checkKernel(t *testing.T, s *Store, k Kernel, wantModules []string) map[string]string {
	t.Helper()
	if !reflect.DeepEqual(k.Modules, wantModules) && (len(k.Modules) != 0 || len(wantModules) != 0) {
		t.Errorf("modules:\n%v\nwant\n%v", k.Modules, wantModules)
	}
	a := k.Artifacts()
	if a.Vmlinuz != filepath.Join(s.Dir(), k.Name, "vmlinuz") || a.Initramfs != filepath.Join(s.Dir(), k.Name, "initramfs.cpio") || a.Release != k.Release {
		t.Errorf("artifacts %+v", a)
	}
	for _, f := range []struct {
		path      string
		size      int64
		sha256sum string
	}{{a.Vmlinuz, k.VmlinuzSize, k.VmlinuzSHA256}, {a.Initramfs, k.InitramfsSize, k.InitramfsSHA256}} {
		fi, err := os.Stat(f.path)
		must(t, err)
		if fi.Size() != f.size || sha(t, f.path) != f.sha256sum {
			t.Errorf("%s: size %d sha %s, metadata says %d %s", f.path, fi.Size(), sha(t, f.path), f.size, f.sha256sum)
		}
	}
	// kernel.json round-trips to what Import returned.
	got, err := s.Get(context.Background(), k.Name)
	must(t, err)
	if !reflect.DeepEqual(got, k) {
		t.Errorf("Get = %+v\nImport returned %+v", got, k)
	}

	root := extractCpio(t, a.Initramfs)
	if _, err := os.Stat(filepath.Join(root, "init")); err == nil {
		t.Error("base initramfs holds /init")
	}
	list, err := os.ReadFile(filepath.Join(root, strings.TrimPrefix(proto.ModulesListPath, "/")))
	must(t, err)
	lines := strings.Split(strings.TrimSuffix(string(list), "\n"), "\n")
	if len(wantModules) == 0 {
		lines = nil
	}
	if len(lines) != len(wantModules) {
		t.Fatalf("modules.list has %d lines, want %d:\n%s", len(lines), len(wantModules), list)
	}
	byName := map[string]string{}
	for i, l := range lines {
		prefix := "/lib/modules/" + k.Release + "/"
		if !strings.HasPrefix(l, prefix) || !strings.HasSuffix(l, "/"+wantModules[i]+".ko") && !strings.HasSuffix(l, "/"+strings.ReplaceAll(wantModules[i], "_", "-")+".ko") {
			t.Errorf("modules.list line %d = %q, want %s...%s.ko", i, l, prefix, wantModules[i])
		}
		data, err := os.ReadFile(filepath.Join(root, l))
		if err != nil {
			t.Errorf("listed module missing from the initramfs: %v", err)
			continue
		}
		if !bytes.HasPrefix(data, []byte("\x7fELF")) {
			t.Errorf("%s is not an uncompressed ELF module", l)
		}
		byName[wantModules[i]] = l
	}
	// Nothing but the listed modules.
	n := 0
	must(t, filepath.Walk(filepath.Join(root, "lib"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n++
		}
		if os.IsNotExist(err) && len(wantModules) == 0 {
			return nil
		}
		return err
	}))
	if n != len(wantModules) {
		t.Errorf("initramfs holds %d module files, want %d", n, len(wantModules))
	}
	return byName
}

func TestImportFiles(t *testing.T) {
	s := newTestStore(t, nil)
	vmlinuz, modules := fakeKernel(t, t.TempDir())
	k, err := s.Import(testCtx(t), "fake", Source{Vmlinuz: vmlinuz, ModulesDir: modules})
	if err != nil {
		t.Fatal(err)
	}
	if k.Name != "fake" || k.Release != fakeRelease || k.Format != FormatBzImage || !k.Created.Equal(testTime()) ||
		k.Source != "file:"+vmlinuz || !reflect.DeepEqual(k.RootModules, DefaultModules()) {
		t.Errorf("kernel %+v", k)
	}
	paths := checkKernel(t, s, k, fakeKernelOrder())
	if paths["virtio_blk"] != "/lib/modules/"+fakeRelease+"/kernel/drivers/block/virtio_blk.ko" {
		t.Errorf("xz module stored at %q, want it decompressed to .ko", paths["virtio_blk"])
	}
	if got := storeEntries(t, s); !reflect.DeepEqual(got, []string{"fake"}) {
		t.Errorf("store holds %v, want only the kernel", got)
	}
	// The stored image is a copy: the source may go away.
	must(t, os.Remove(vmlinuz))
	if _, err := os.Stat(k.Artifacts().Vmlinuz); err != nil {
		t.Error(err)
	}
	a, err := s.Artifacts(testCtx(t), "fake")
	if err != nil || a != k.Artifacts() {
		t.Errorf("Store.Artifacts = %+v, %v", a, err)
	}

	// The same name again is refused and the kernel is untouched.
	vmlinuz2, modules2 := fakeKernel(t, t.TempDir())
	_, err = s.Import(testCtx(t), "fake", Source{Vmlinuz: vmlinuz2, ModulesDir: modules2})
	if !errors.Is(err, api.ErrAlreadyExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if got, _ := s.Get(testCtx(t), "fake"); !reflect.DeepEqual(got, k) {
		t.Error("duplicate import changed the kernel")
	}
	if got := storeEntries(t, s); !reflect.DeepEqual(got, []string{"fake"}) {
		t.Errorf("store holds %v after a refused import", got)
	}
}

func TestImportOptions(t *testing.T) {
	s := newTestStore(t, nil)
	vmlinuz, modules := fakeKernel(t, t.TempDir())
	ctx := testCtx(t)

	k, err := s.Import(ctx, "ext4-only", Source{Vmlinuz: vmlinuz, ModulesDir: modules, Modules: []string{"ext4"}, Description: "hand-made"})
	if err != nil {
		t.Fatal(err)
	}
	if k.Source != "hand-made" || !reflect.DeepEqual(k.RootModules, []string{"ext4"}) {
		t.Errorf("kernel %+v", k)
	}
	checkKernel(t, s, k, []string{"crc16", "crc32c_generic", "jbd2", "mbcache", "ext4"})

	// No modules directory: a kernel with everything built in.
	k, err = s.Import(ctx, "monolithic", Source{Vmlinuz: vmlinuz})
	if err != nil {
		t.Fatal(err)
	}
	if k.Release != fakeRelease || len(k.Modules) != 0 {
		t.Errorf("monolithic kernel %+v", k)
	}
	checkKernel(t, s, k, nil)

	// The host's kernel, from an injected root.
	s.HostRoot = filepath.Dir(filepath.Dir(filepath.Dir(modules)))
	s.HostRelease = func() (string, error) { return fakeRelease, nil }
	k, err = s.Import(ctx, "host", Source{FromHost: true})
	if err != nil {
		t.Fatal(err)
	}
	if k.Source != "host:"+vmlinuz {
		t.Errorf("host source %q", k.Source)
	}
	checkKernel(t, s, k, fakeKernelOrder())

	list, err := s.List(ctx)
	must(t, err)
	var names []string
	for _, k := range list {
		names = append(names, k.Name)
	}
	if !reflect.DeepEqual(names, []string{"ext4-only", "host", "monolithic"}) {
		t.Errorf("List = %v", names)
	}
}

func TestImportBadInput(t *testing.T) {
	root := t.TempDir()
	vmlinuz, modules := fakeKernel(t, root)
	other := filepath.Join(root, "other-bzImage")
	must(t, os.WriteFile(other, fakeBzImage("5.10.0-other"), 0o644))
	text := filepath.Join(root, "README")
	must(t, os.WriteFile(text, []byte("not a kernel"), 0o644))
	// Modules of another kernel: same names, other vermagic.
	_, otherModules := func() (string, string) {
		d := t.TempDir()
		_, m := fakeKernel(t, d)
		writeFakeModule(t, m, "kernel/fs/mbcache.ko", "name=mbcache", "depends=", "vermagic=5.10.0-other SMP")
		return "", m
	}()

	for _, tc := range []struct {
		name    string
		kname   string
		src     Source
		class   error
		mention string
	}{
		{"bad name", "Bad_Name", Source{Vmlinuz: vmlinuz}, api.ErrBadRequest, "invalid kernel name"},
		{"dot name", ".staging-x", Source{Vmlinuz: vmlinuz}, api.ErrBadRequest, "invalid kernel name"},
		{"no source", "k", Source{}, api.ErrBadRequest, "exactly one"},
		{"two sources", "k", Source{Vmlinuz: vmlinuz, FromHost: true}, api.ErrBadRequest, "exactly one"},
		{"modules without image", "k", Source{ModulesDir: modules}, api.ErrBadRequest, "needs a kernel image"},
		{"bad module name", "k", Source{Vmlinuz: vmlinuz, ModulesDir: modules, Modules: []string{"../x"}}, api.ErrBadRequest, "invalid module name"},
		{"missing image", "k", Source{Vmlinuz: filepath.Join(root, "nope")}, api.ErrBadRequest, filepath.Join(root, "nope") + " does not exist"},
		{"image is a dir", "k", Source{Vmlinuz: root}, api.ErrBadRequest, "not a regular file"},
		{"missing modules", "k", Source{Vmlinuz: vmlinuz, ModulesDir: filepath.Join(root, "nomods")}, api.ErrBadRequest, "nomods does not exist"},
		{"modules not a dir", "k", Source{Vmlinuz: vmlinuz, ModulesDir: text}, api.ErrBadRequest, "not a directory"},
		{"not a kernel", "k", Source{Vmlinuz: text, ModulesDir: modules}, api.ErrBadRequest, "neither a bzImage"},
		{"image of another release", "k", Source{Vmlinuz: other, ModulesDir: modules}, api.ErrBadRequest, `release "5.10.0-other" but its modules are for "` + fakeRelease},
		{"modules of two releases", "k", Source{Vmlinuz: vmlinuz, ModulesDir: otherModules}, api.ErrBadRequest, "mbcache.ko is built for kernel"},
		{"missing module", "k", Source{Vmlinuz: vmlinuz, ModulesDir: modules, Modules: []string{"virtio_mmio", "9p"}}, api.ErrBadRequest, `"9p" is neither a module`},
		{"missing host kernel", "k", Source{FromHost: true}, api.ErrBadRequest, "vmlinuz-9.9.9-none does not exist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t, nil)
			s.HostRoot = root
			s.HostRelease = func() (string, error) { return "9.9.9-none", nil }
			_, err := s.Import(testCtx(t), tc.kname, tc.src)
			if !errors.Is(err, tc.class) {
				t.Fatalf("err = %v, want class %v", err, tc.class)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("err = %q, want it to mention %q", err, tc.mention)
			}
			if got := storeEntries(t, s); len(got) != 0 {
				t.Errorf("failed import left %v", got)
			}
		})
	}
}

func TestImportCanceled(t *testing.T) {
	s := newTestStore(t, nil)
	vmlinuz, modules := fakeKernel(t, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Import(ctx, "k", Source{Vmlinuz: vmlinuz, ModulesDir: modules}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want canceled", err)
	}
	if got := storeEntries(t, s); len(got) != 0 {
		t.Errorf("canceled import left %v", got)
	}
}

func TestImportConcurrentSameName(t *testing.T) {
	s := newTestStore(t, nil)
	vmlinuz, modules := fakeKernel(t, t.TempDir())
	const n = 4
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Import(testCtx(t), "race", Source{Vmlinuz: vmlinuz, ModulesDir: modules})
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, api.ErrAlreadyExists):
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d imports succeeded, want exactly 1", ok)
	}
	if got := storeEntries(t, s); !reflect.DeepEqual(got, []string{"race"}) {
		t.Errorf("store holds %v", got)
	}
}

func TestGetListRemove(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := testCtx(t)
	if list, err := s.List(ctx); err != nil || len(list) != 0 {
		t.Fatalf("List of a new store: %v, %v", list, err)
	}
	if _, err := s.Get(ctx, "none"); !errors.Is(err, api.ErrNotFound) || !strings.Contains(err.Error(), `"none"`) {
		t.Errorf("Get missing: %v", err)
	}
	if _, err := s.Get(ctx, "../etc"); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("Get bad name: %v", err)
	}
	if err := s.Remove(ctx, "none"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("Remove missing: %v", err)
	}
	if err := s.Remove(ctx, "/"); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("Remove bad name: %v", err)
	}

	vmlinuz, modules := fakeKernel(t, t.TempDir())
	for _, n := range []string{"b", "a"} {
		if _, err := s.Import(ctx, n, Source{Vmlinuz: vmlinuz, ModulesDir: modules, Modules: []string{"virtio_ring"}}); err != nil {
			t.Fatal(err)
		}
	}
	// Leftovers of a crash and a damaged entry do not show up, nor hide the rest.
	must(t, os.MkdirAll(filepath.Join(s.Dir(), ".staging-c-123", "deb"), 0o755))
	must(t, os.MkdirAll(filepath.Join(s.Dir(), ".removing-d-1", "d"), 0o755))
	must(t, os.MkdirAll(filepath.Join(s.Dir(), ".download-e-1"), 0o755))
	must(t, os.MkdirAll(filepath.Join(s.Dir(), "damaged"), 0o755))
	list, err := s.List(ctx)
	must(t, err)
	if len(list) != 2 || list[0].Name != "a" || list[1].Name != "b" {
		t.Errorf("List = %+v", list)
	}
	if _, err := s.Get(ctx, "damaged"); err == nil || errors.Is(err, api.ErrNotFound) || !strings.Contains(err.Error(), "kernel.json is missing") {
		t.Errorf("Get damaged: %v", err)
	}
	must(t, s.Reconcile(ctx))
	if got := storeEntries(t, s); !reflect.DeepEqual(got, []string{"a", "b", "damaged"}) {
		t.Errorf("after Reconcile: %v", got)
	}

	must(t, s.Remove(ctx, "a"))
	if _, err := s.Get(ctx, "a"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("Get after Remove: %v", err)
	}
	if err := s.Remove(ctx, "a"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("second Remove: %v", err)
	}
	if got := storeEntries(t, s); !reflect.DeepEqual(got, []string{"b", "damaged"}) {
		t.Errorf("after Remove: %v", got)
	}
	// The name is free again.
	if _, err := s.Import(ctx, "a", Source{Vmlinuz: vmlinuz}); err != nil {
		t.Errorf("re-import: %v", err)
	}
}

func TestMetadataFile(t *testing.T) {
	s := newTestStore(t, nil)
	vmlinuz, modules := fakeKernel(t, t.TempDir())
	k, err := s.Import(testCtx(t), "meta", Source{Vmlinuz: vmlinuz, ModulesDir: modules, Modules: []string{"virtio_mmio"}})
	must(t, err)
	data, err := os.ReadFile(filepath.Join(k.Dir, "kernel.json"))
	must(t, err)
	var m map[string]any
	must(t, json.Unmarshal(data, &m))
	for _, key := range []string{"name", "release", "source", "format", "modules", "root_modules", "vmlinuz_size", "initramfs_size", "created"} {
		if _, ok := m[key]; !ok {
			t.Errorf("kernel.json lacks %q: %s", key, data)
		}
	}
	if _, ok := m["Dir"]; ok {
		t.Error("kernel.json stores the directory")
	}
	if fmt.Sprint(m["modules"]) != "[virtio_ring virtio virtio_mmio]" || m["format"] != "bzImage" || m["created"] != "2024-05-01T12:00:00Z" {
		t.Errorf("kernel.json: %s", data)
	}
}
