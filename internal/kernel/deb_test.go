package kernel

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/system"
	"github.com/kilnvm/kiln/internal/testutil"
)

// buildDeb packs root (which gets a DEBIAN/control) into a .deb with the
// real dpkg-deb; compression is "xz" or "gzip".
func buildDeb(t testing.TB, root, compression string) string {
	t.Helper()
	testutil.RequireCommand(t, "dpkg-deb")
	must(t, os.MkdirAll(filepath.Join(root, "DEBIAN"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "DEBIAN", "control"), []byte(
		"Package: linux-image-kiln-test\nVersion: 1.0\nArchitecture: amd64\nMaintainer: kiln <kiln@example.org>\nDescription: test kernel\n"), 0o644))
	deb := filepath.Join(t.TempDir(), "linux-image-kiln-test_1.0_amd64.deb")
	out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Z"+compression, "-b", root, deb).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb -b: %v: %s", err, out)
	}
	return deb
}

// fakeNoDpkgRunner stands in for a host without dpkg-deb: running it fails
// as os/exec does when a binary is not on PATH. Other commands run.
type fakeNoDpkgRunner struct {
	system.ExecRunner
	mu    sync.Mutex
	tried int
}

func (r *fakeNoDpkgRunner) Run(ctx context.Context, c system.Cmd) ([]byte, error) {
	if c.Name == "dpkg-deb" {
		r.mu.Lock()
		r.tried++
		r.mu.Unlock()
		return nil, fmt.Errorf("%s: %w", c.Name, &exec.Error{Name: c.Name, Err: exec.ErrNotFound})
	}
	return r.ExecRunner.Run(ctx, c)
}

func TestImportFakeDeb(t *testing.T) {
	root := t.TempDir()
	fakeKernel(t, root)
	// Things a kernel package also carries, which the Go reader skips.
	must(t, os.MkdirAll(filepath.Join(root, "usr/share/doc/linux-image-kiln-test"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "usr/share/doc/linux-image-kiln-test/changelog"), []byte("x"), 0o644))
	must(t, os.Symlink("/usr/src/linux-headers", filepath.Join(root, "lib/modules", fakeRelease, "build")))

	for _, tc := range []struct {
		name, compression string
		pureGo            bool
	}{
		{"dpkg-deb", "xz", false},
		{"go-xz", "xz", true},
		{"go-gzip", "gzip", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			deb := buildDeb(t, root, tc.compression)
			var runner system.Runner = system.ExecRunner{}
			fake := &fakeNoDpkgRunner{}
			if tc.pureGo {
				runner = fake
			}
			s := newTestStore(t, runner)
			k, err := s.Import(testCtx(t), "deb", Source{Deb: deb})
			if err != nil {
				t.Fatal(err)
			}
			if tc.pureGo && fake.tried != 1 {
				t.Errorf("dpkg-deb tried %d times", fake.tried)
			}
			if k.Release != fakeRelease || k.Source != "deb:"+deb {
				t.Errorf("kernel %+v", k)
			}
			checkKernel(t, s, k, fakeKernelOrder())
			if got := storeEntries(t, s); !reflect.DeepEqual(got, []string{"deb"}) {
				t.Errorf("store holds %v: the unpacked package must not stay", got)
			}
			if _, err := os.Stat(filepath.Join(k.Dir, "deb")); err == nil {
				t.Error("unpacked package left in the kernel directory")
			}
		})
	}
}

func TestImportBadDeb(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.deb")
	must(t, os.WriteFile(garbage, []byte("this is not a package"), 0o644))
	truncated := filepath.Join(dir, "truncated.deb")
	must(t, os.WriteFile(truncated, []byte("!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n"), 0o644))

	docRoot := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(docRoot, "usr/share/doc/x"), 0o755))
	must(t, os.WriteFile(filepath.Join(docRoot, "usr/share/doc/x/README"), []byte("no kernel here"), 0o644))
	noKernel := buildDeb(t, docRoot, "xz")

	noModsRoot := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(noModsRoot, "boot"), 0o755))
	must(t, os.WriteFile(filepath.Join(noModsRoot, "boot", "vmlinuz-1.2.3"), fakeBzImage("1.2.3"), 0o644))
	noModules := buildDeb(t, noModsRoot, "xz")

	twoRoot := t.TempDir()
	fakeKernel(t, twoRoot)
	must(t, os.WriteFile(filepath.Join(twoRoot, "boot", "vmlinuz-9.9"), fakeBzImage("9.9"), 0o644))
	twoKernels := buildDeb(t, twoRoot, "xz")

	for _, tc := range []struct {
		name, deb, mention string
		pureGo             bool
	}{
		{"missing", filepath.Join(dir, "nope.deb"), "nope.deb does not exist", false},
		{"garbage", garbage, "garbage.deb is not a Debian package", false},
		{"garbage go", garbage, "garbage.deb is not a Debian package", true},
		{"truncated go", truncated, "no data.tar member", true},
		{"no kernel", noKernel, "holds no kernel (no boot/vmlinuz-*)", false},
		{"no kernel go", noKernel, "holds no kernel (no boot/vmlinuz-*)", true},
		{"no modules", noModules, "holds boot/vmlinuz-1.2.3 but no lib/modules/1.2.3", false},
		{"two kernels", twoKernels, "several kernels", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var runner system.Runner = system.ExecRunner{}
			if tc.pureGo {
				runner = &fakeNoDpkgRunner{}
			}
			s := newTestStore(t, runner)
			_, err := s.Import(testCtx(t), "k", Source{Deb: tc.deb})
			if !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("err = %v, want a bad_request mentioning %q", err, tc.mention)
			}
			if got := storeEntries(t, s); len(got) != 0 {
				t.Errorf("failed import left %v", got)
			}
		})
	}
}

func TestUntarRejectsEscapes(t *testing.T) {
	// A package whose data.tar climbs out of the target: built by hand,
	// since dpkg-deb would not make one.
	for _, name := range []string{"../boot/vmlinuz-x", "/boot/vmlinuz-x", "boot/../../x"} {
		t.Run(name, func(t *testing.T) {
			pr, pw := io.Pipe()
			go func() { pw.CloseWithError(writeTar(pw, name)) }()
			dest := t.TempDir()
			err := untarKernel(context.Background(), pr, dest, "evil.deb")
			if !errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), "leaves the package root") {
				t.Fatalf("err = %v", err)
			}
			if ents, _ := os.ReadDir(dest); len(ents) != 0 {
				t.Errorf("wrote %v", ents)
			}
		})
	}
}

// writeTar writes a tar stream with one regular file called name.
func writeTar(w io.Writer, name string) error {
	tw := tar.NewWriter(w)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: 1, Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := tw.Write([]byte("x")); err != nil {
		return err
	}
	return tw.Close()
}

func TestParseAptDepends(t *testing.T) {
	for out, want := range map[string]string{
		"linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n":                                   "linux-image-6.1.0-56-amd64",
		"linux-image-amd64\n  Recommends: foo\n |Depends: linux-image-6.1.0-9-amd64\n  Depends: bar\n": "linux-image-6.1.0-9-amd64",
	} {
		got, err := parseAptDepends([]byte(out))
		if err != nil || got != want {
			t.Errorf("parseAptDepends(%q) = %q, %v", out, got, err)
		}
	}
	if _, err := parseAptDepends([]byte("linux-image-amd64\n  Depends: <linux-image-virtual>\n")); err == nil {
		t.Error("a virtual package was accepted")
	}
}

// fakeAptRunner stands in for apt (which would download 60 MB from the
// network): it answers apt-cache with canned output and "downloads" by
// copying a local .deb into the command's directory.
type fakeAptRunner struct {
	system.ExecRunner
	deb       string
	depends   string
	downloads []system.Cmd
}

func (r *fakeAptRunner) Run(ctx context.Context, c system.Cmd) ([]byte, error) {
	switch {
	case c.Name == "apt-cache" && len(c.Args) == 2 && c.Args[0] == "depends":
		return []byte(r.depends), nil
	case c.Name == "apt-cache" && len(c.Args) == 3 && c.Args[0] == "show":
		return []byte("Package: " + c.Args[2] + "\nVersion: 6.1.99-1\nDescription: x\n"), nil
	case c.Name == "apt-get":
		r.downloads = append(r.downloads, c)
		data, err := os.ReadFile(r.deb)
		if err != nil {
			return nil, err
		}
		return nil, os.WriteFile(filepath.Join(c.Dir, filepath.Base(r.deb)), data, 0o644)
	}
	return r.ExecRunner.Run(ctx, c)
}

func TestPullDebianFakeApt(t *testing.T) {
	root := t.TempDir()
	fakeKernel(t, root)
	deb := buildDeb(t, root, "xz")
	apt := &fakeAptRunner{deb: deb, depends: "linux-image-amd64\n  Depends: linux-image-6.1.0-99-amd64\n"}
	s := newTestStore(t, apt)
	ctx := testCtx(t)

	src, err := s.PullDebianSource(ctx)
	if err != nil || src != (DebianPackage{"linux-image-amd64", "linux-image-6.1.0-99-amd64", "6.1.99-1"}) {
		t.Fatalf("PullDebianSource = %+v, %v", src, err)
	}
	k, err := s.PullDebian(ctx, "debian")
	if err != nil {
		t.Fatal(err)
	}
	if k.Source != "debian:linux-image-6.1.0-99-amd64=6.1.99-1" {
		t.Errorf("source %q", k.Source)
	}
	if len(apt.downloads) != 1 || !reflect.DeepEqual(apt.downloads[0].Args, []string{"download", "-q", "linux-image-6.1.0-99-amd64=6.1.99-1"}) ||
		!strings.HasPrefix(filepath.Base(apt.downloads[0].Dir), ".download-debian-") {
		t.Errorf("downloads %+v", apt.downloads)
	}
	checkKernel(t, s, k, fakeKernelOrder())
	if got := storeEntries(t, s); !reflect.DeepEqual(got, []string{"debian"}) {
		t.Errorf("store holds %v", got)
	}

	// An existing name fails before downloading anything.
	if _, err := s.PullDebian(ctx, "debian"); !errors.Is(err, api.ErrAlreadyExists) || len(apt.downloads) != 1 {
		t.Errorf("duplicate pull: %v, %d downloads", err, len(apt.downloads))
	}
	if _, err := s.PullDebian(ctx, "Debian!"); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("bad name: %v", err)
	}
	// apt knows no kernel: a clear error, nothing left.
	apt.depends = "linux-image-amd64\n"
	if _, err := s.PullDebian(ctx, "other"); err == nil || !strings.Contains(err.Error(), "no linux-image-* dependency") {
		t.Errorf("no dependency: %v", err)
	}
	if got := storeEntries(t, s); !reflect.DeepEqual(got, []string{"debian"}) {
		t.Errorf("store holds %v", got)
	}
}

// debianOrder is the load order of the default roots for Debian 12's
// kernel, as its modules' depends= and softdep= say (checked by hand with
// modinfo -F depends/softdep on linux-image-6.1.0-*-amd64): virtio needs
// virtio_ring, virtio_net needs net_failover → failover, ext4 needs jbd2,
// mbcache and crc16 and (softdep) crypto-crc32c, which crc32c_generic and
// crc32c_intel provide; the vsock transport needs its common part and vsock.
func debianOrder() []string {
	return []string{
		"virtio_ring", "virtio", "virtio_mmio", "virtio_blk",
		"failover", "net_failover", "virtio_net", "virtio_console",
		"crc16", "crc32c_generic", "jbd2", "mbcache", "ext4",
		"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport",
	}
}

var debianRelease = regexp.MustCompile(`^6\.1\.0-\d+-amd64$`)

// checkDependsFirst asserts, from the real modinfo data, that every
// module comes after everything its depends= names (unless built in).
func checkDependsFirst(t *testing.T, mods []Module) {
	t.Helper()
	pos := map[string]int{}
	for i, m := range mods {
		pos[m.Name] = i
	}
	for i, m := range mods {
		for _, d := range m.Info.Depends {
			if j, ok := pos[d]; !ok || j >= i {
				t.Errorf("%s (at %d) depends on %s (at %d, listed %v)", m.Name, i, d, j, ok)
			}
		}
	}
}

func TestDebianKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("unpacks the Debian kernel package (~400 MB)")
	}
	deb := testutil.DebianKernelDeb(t)
	vmlinuz, modulesDir := testutil.DebianKernel(t)
	ctx := testCtx(t)

	mods, err := ResolveModules(ctx, modulesDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkDependsFirst(t, mods)
	var names []string
	for _, m := range mods {
		names = append(names, m.Name)
	}
	if !reflect.DeepEqual(names, debianOrder()) {
		t.Errorf("Debian modules:\n%v\nwant\n%v", names, debianOrder())
	}

	s := newTestStore(t, nil)
	fromDeb, err := s.Import(ctx, "debian", Source{Deb: deb})
	if err != nil {
		t.Fatal(err)
	}
	if !debianRelease.MatchString(fromDeb.Release) || fromDeb.Release != filepath.Base(modulesDir) || fromDeb.Format != FormatBzImage {
		t.Errorf("kernel %+v", fromDeb)
	}
	checkKernel(t, s, fromDeb, debianOrder())

	fromFiles, err := s.Import(ctx, "files", Source{Vmlinuz: vmlinuz, ModulesDir: modulesDir})
	if err != nil {
		t.Fatal(err)
	}
	checkKernel(t, s, fromFiles, debianOrder())
	// The same kernel by two routes gives the same bytes: the build is
	// deterministic, so the daemon may cache by hash.
	if fromDeb.InitramfsSHA256 != fromFiles.InitramfsSHA256 || fromDeb.VmlinuzSHA256 != fromFiles.VmlinuzSHA256 {
		t.Errorf("deb and files differ: %s/%s vs %s/%s", fromDeb.InitramfsSHA256, fromDeb.VmlinuzSHA256, fromFiles.InitramfsSHA256, fromFiles.VmlinuzSHA256)
	}
	if _, err := s.Import(ctx, "debian", Source{Deb: deb}); !errors.Is(err, api.ErrAlreadyExists) {
		t.Errorf("duplicate: %v", err)
	}
	if got := storeEntries(t, s); !reflect.DeepEqual(got, []string{"debian", "files"}) {
		t.Errorf("store holds %v", got)
	}
}

func TestDebianKernelPureGo(t *testing.T) {
	if testing.Short() {
		t.Skip("decompresses the Debian kernel package in Go")
	}
	t.Parallel() // CPU-bound; overlaps the I/O-bound Debian tests
	deb := testutil.DebianKernelDeb(t)
	s := newTestStore(t, &fakeNoDpkgRunner{})
	k, err := s.Import(testCtx(t), "debian", Source{Deb: deb})
	if err != nil {
		t.Fatal(err)
	}
	if !debianRelease.MatchString(k.Release) {
		t.Errorf("release %q", k.Release)
	}
	checkKernel(t, s, k, debianOrder())
}

func TestPullDebianReal(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads the Debian kernel package with apt-get")
	}
	t.Parallel() // network-bound
	testutil.RequireRoot(t)
	testutil.RequireCommand(t, "apt-get")
	s := newTestStore(t, nil)
	ctx := testCtx(t)
	src, err := s.PullDebianSource(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k, err := s.PullDebian(ctx, "debian")
	if err != nil {
		t.Fatal(err)
	}
	if k.Source != src.String() || !strings.HasSuffix(src.Package, k.Release) {
		t.Errorf("pulled %+v from %v", k, src)
	}
	checkKernel(t, s, k, debianOrder())
	if got := storeEntries(t, s); !reflect.DeepEqual(got, []string{"debian"}) {
		t.Errorf("store holds %v", got)
	}
}
