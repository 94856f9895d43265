package image_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/disk"
	"github.com/kilnvm/kiln/internal/image"
	"github.com/kilnvm/kiln/internal/system"
	"github.com/kilnvm/kiln/internal/testutil"
)

var runner = system.ExecRunner{}

// stubAgent stands in for the kiln-agent binary, which is another
// package's build product: the image builder only copies it.
const stubAgent = "#!/bin/sh\n# stub kiln-agent for image tests\nexit 0\n"

type env struct {
	store *image.Store
	dir   string
	agent string
}

func newEnv(t *testing.T, opts ...image.Option) env {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireCommand(t, "mkfs.ext4")
	base := t.TempDir()
	agent := filepath.Join(base, "kiln-agent")
	if err := os.WriteFile(agent, []byte(stubAgent), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "images")
	s, err := image.NewStore(dir, runner, slog.New(slog.NewTextHandler(io.Discard, nil)), agent, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return env{store: s, dir: dir, agent: agent}
}

// assertStoreHolds fails unless the store directory holds exactly names
// (no staging or removal leftovers).
func (e env) assertStoreHolds(t *testing.T, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, x := range ents {
		got = append(got, x.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Fatalf("store holds %v, want %v", got, names)
	}
}

func stat(t *testing.T, img, p string) disk.Ext4Inode {
	t.Helper()
	ino, err := disk.StatExt4(context.Background(), runner, img, p)
	if err != nil {
		t.Fatalf("stat %s in image: %v", p, err)
	}
	return ino
}

func TestImportBusyboxTar(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	e := newEnv(t, image.WithClock(func() time.Time { return now }))
	ctx := context.Background()
	f, err := os.Open(testutil.BusyboxRootfsTar(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := e.store.ImportTar(ctx, "busybox", f, image.BuildOptions{KernelName: "debian"})
	if err != nil {
		t.Fatal(err)
	}
	if img.Name != "busybox" || img.Source != "tar" || img.HasSystemd || img.KernelName != "debian" || !img.Created.Equal(now) {
		t.Errorf("image %+v", img)
	}
	fi, err := os.Stat(img.RootFS)
	if err != nil || fi.Size() != img.SizeBytes {
		t.Fatalf("rootfs %v (%v), want %d bytes", fi, err, img.SizeBytes)
	}
	// Content-aware size: about 2 MiB of busybox → 256 MiB + 30% → 320 MiB.
	if img.ContentBytes < 1<<20 || img.ContentBytes > 16<<20 || img.SizeBytes != 320<<20 {
		t.Errorf("content %d bytes, size %d: want a few MiB in a 320 MiB filesystem", img.ContentBytes, img.SizeBytes)
	}
	e.assertStoreHolds(t, "busybox")

	r := img.RootFS
	checks := []struct {
		path string
		want disk.Ext4Inode
	}{
		{"/etc/shadow", disk.Ext4Inode{Type: "regular", Mode: testutil.BusyboxShadowMode}},
		{testutil.BusyboxSetuidPath, disk.Ext4Inode{Type: "regular", Mode: 0o4755}},
		{"/bin/sh", disk.Ext4Inode{Type: "symlink", Mode: 0o777, LinkTarget: "/bin/busybox"}},
		{"/bin/busybox", disk.Ext4Inode{Type: "regular", Mode: 0o755}},
		{"/dev/null", disk.Ext4Inode{Type: "character special", Mode: 0o666, Major: 1, Minor: 3}},
		{proto.ImageAgentPath, disk.Ext4Inode{Type: "regular", Mode: 0o755}},
		{"/root", disk.Ext4Inode{Type: "directory", Mode: 0o700}},
		{"/tmp", disk.Ext4Inode{Type: "directory", Mode: 0o1777}},
		{"/run", disk.Ext4Inode{Type: "directory", Mode: 0o755}},
		{"/proc", disk.Ext4Inode{Type: "directory", Mode: 0o755}},
		{"/sys", disk.Ext4Inode{Type: "directory", Mode: 0o755}},
		{"/dev", disk.Ext4Inode{Type: "directory", Mode: 0o755}},
	}
	for _, c := range checks {
		got := stat(t, r, c.path)
		if got.Type != c.want.Type || got.Mode != c.want.Mode || got.UID != 0 || got.GID != 0 ||
			got.LinkTarget != c.want.LinkTarget || got.Major != c.want.Major || got.Minor != c.want.Minor {
			t.Errorf("%s: got %+v, want %+v owned by root", c.path, got, c.want)
		}
	}
	if data, err := disk.ReadExt4File(ctx, runner, r, proto.ImageAgentPath); err != nil || string(data) != stubAgent {
		t.Errorf("injected agent: %q, %v", data, err)
	}
	if data, err := disk.ReadExt4File(ctx, runner, r, testutil.BusyboxMarkerPath); err != nil || string(data) != testutil.BusyboxMarker {
		t.Errorf("marker: %q, %v", data, err)
	}
	if _, err := disk.StatExt4(ctx, runner, r, proto.SystemdUnitPath); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("systemd unit in an image without systemd: %v", err)
	}
	if out, err := system.Command(ctx, runner, "e2fsck", "-f", "-n", r); err != nil {
		t.Errorf("image does not check clean: %v\n%s", err, out)
	}
	if out, _ := system.Command(ctx, runner, "blkid", "-o", "value", "-s", "LABEL", r); strings.TrimSpace(string(out)) != image.RootFSLabel {
		t.Errorf("label %q", out)
	}

	got, err := e.store.Get(ctx, "busybox")
	if err != nil || got != img {
		t.Errorf("Get: %+v, %v; want %+v", got, err, img)
	}
	list, err := e.store.List(ctx)
	if err != nil || len(list) != 1 || list[0] != img {
		t.Errorf("List: %+v, %v", list, err)
	}

	t.Run("Duplicate", func(t *testing.T) {
		before, _ := os.ReadFile(filepath.Join(e.dir, "busybox", image.MetadataFile))
		_, err := e.store.ImportTar(ctx, "busybox", bytes.NewReader(nil), image.BuildOptions{})
		if !errors.Is(err, api.ErrAlreadyExists) {
			t.Fatalf("got %v, want already exists", err)
		}
		after, _ := os.ReadFile(filepath.Join(e.dir, "busybox", image.MetadataFile))
		if !bytes.Equal(before, after) {
			t.Fatal("existing image changed")
		}
		e.assertStoreHolds(t, "busybox")
	})

	t.Run("Remove", func(t *testing.T) {
		if err := e.store.Remove(ctx, "busybox"); err != nil {
			t.Fatal(err)
		}
		e.assertStoreHolds(t)
		if _, err := e.store.Get(ctx, "busybox"); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("Get after remove: %v", err)
		}
		if err := e.store.Remove(ctx, "busybox"); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("second Remove: %v", err)
		}
		if list, err := e.store.List(ctx); err != nil || len(list) != 0 {
			t.Errorf("List after remove: %v, %v", list, err)
		}
	})
}

// tarOf builds an archive of regular files, directories and symlinks
// (symlinks are given as "->target" bodies).
func tarOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sortStrings(names)
	for _, n := range names {
		body := files[n]
		h := &tar.Header{Name: n, Mode: 0o644, ModTime: time.Unix(1600000000, 0), Typeflag: tar.TypeReg, Size: int64(len(body))}
		switch {
		case strings.HasSuffix(n, "/"):
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		case strings.HasPrefix(body, "->"):
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, body[2:], 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func TestImportSystemdTree(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// A host directory an "etc" symlink in the archive points at: the unit
	// and its wants link must land in the image's own /etc, never here.
	hostEtc := t.TempDir()
	files := map[string]string{
		"usr/":                    "",
		"usr/lib/":                "",
		"usr/lib/systemd/":        "",
		"usr/lib/systemd/systemd": "ELF pretend",
		"lib":                     "->usr/lib",
		"sbin/":                   "",
		"sbin/init":               "->/lib/systemd/systemd", // absolute: resolved inside the image
		"realetc/":                "",
		"realetc/machine-id":      "0123456789abcdef0123456789abcdef\n",
		"etc":                     "->" + "/realetc",
		"tmp":                     "->" + hostEtc, // a symlinked /tmp is left alone
	}
	img, err := e.store.ImportTar(ctx, "sd", bytes.NewReader(tarOf(t, files)), image.BuildOptions{Size: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if !img.HasSystemd || img.SizeBytes != 64<<20 {
		t.Fatalf("image %+v: want systemd detected and the asked size", img)
	}
	unit, err := disk.ReadExt4File(ctx, runner, img.RootFS, "/realetc/systemd/system/kiln-agent.service")
	if err != nil || string(unit) != image.SystemdUnit {
		t.Fatalf("unit through the etc symlink: %q, %v", unit, err)
	}
	wants := stat(t, img.RootFS, "/realetc/systemd/system/multi-user.target.wants/kiln-agent.service")
	if wants.Type != "symlink" || wants.LinkTarget != proto.SystemdUnitPath {
		t.Errorf("wants link %+v", wants)
	}
	if id := stat(t, img.RootFS, "/realetc/machine-id"); id.Size != 0 {
		t.Errorf("machine-id is %d bytes, want emptied", id.Size)
	}
	if tmp := stat(t, img.RootFS, "/tmp"); tmp.Type != "symlink" {
		t.Errorf("/tmp %+v: want the image's symlink kept", tmp)
	}
	if ents, _ := os.ReadDir(hostEtc); len(ents) != 0 {
		t.Errorf("wrote into the host directory %s: %v", hostEtc, ents)
	}
	for _, want := range []string{"ExecStart=" + proto.AgentRunPath + " service", "ConditionPathExists=" + proto.AgentRunPath,
		"Restart=always", "DefaultDependencies=no", "WantedBy=multi-user.target"} {
		if !strings.Contains(image.SystemdUnit, want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	for _, line := range strings.Split(image.SystemdUnit, "\n") {
		for _, dep := range []string{"After=", "Wants=", "Requires=", "BindsTo="} {
			if strings.HasPrefix(line, dep) && strings.Contains(line, "network") {
				t.Errorf("unit depends on the network: %s", line)
			}
		}
	}
}

func TestImportCompressed(t *testing.T) {
	e := newEnv(t)
	raw := tarOf(t, map[string]string{"etc/": "", "etc/hostname": "box\n"})
	var gz, xzb bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	xw, err := xz.NewWriter(&xzb)
	if err != nil {
		t.Fatal(err)
	}
	xw.Write(raw)
	xw.Close()
	for name, data := range map[string][]byte{"plain": raw, "gzip": gz.Bytes(), "xz": xzb.Bytes()} {
		t.Run(name, func(t *testing.T) {
			img, err := e.store.ImportTar(context.Background(), name, bytes.NewReader(data), image.BuildOptions{Size: 32 << 20})
			if err != nil {
				t.Fatal(err)
			}
			if got, err := disk.ReadExt4File(context.Background(), runner, img.RootFS, "/etc/hostname"); err != nil || string(got) != "box\n" {
				t.Fatalf("hostname %q, %v", got, err)
			}
		})
	}
}

func TestImportFailuresLeaveNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	good := tarOf(t, map[string]string{"etc/": "", "etc/x": "x"})
	big := make([]byte, 24<<20)
	for i := range big {
		big[i] = byte(i*7 + 1)
	}
	badZstd := append([]byte{0x28, 0xb5, 0x2f, 0xfd}, bytes.Repeat([]byte{0xff}, 100)...)
	zstdGood := zstdOf(t, tarOf(t, map[string]string{"etc/": "", "etc/x": randomHex(64 << 10)}))
	cases := []struct {
		name, image string
		data        []byte
		opts        image.BuildOptions
		class       error
		says        string
	}{
		{"BadName", "Bad_Name", good, image.BuildOptions{}, api.ErrBadRequest, "invalid image name"},
		{"BadKernelName", "k", good, image.BuildOptions{KernelName: "../x"}, api.ErrBadRequest, "invalid kernel name"},
		{"NegativeSize", "n", good, image.BuildOptions{Size: -1}, api.ErrBadRequest, "image size"},
		{"TinySize", "n", good, image.BuildOptions{Size: 1 << 20}, api.ErrBadRequest, "image size"},
		{"SizeBelowContent", "n", tarOf(t, map[string]string{"big": string(big)}), image.BuildOptions{Size: 16 << 20}, api.ErrBadRequest, "less than"},
		{"DotDotEntry", "n", tarOf(t, map[string]string{"../../etc/cron.d/x": "x"}), image.BuildOptions{}, api.ErrBadRequest, `"../../etc/cron.d/x"`},
		{"Garbage", "n", bytes.Repeat([]byte("junk"), 300), image.BuildOptions{}, api.ErrBadRequest, "read archive"},
		{"Empty", "n", nil, image.BuildOptions{}, api.ErrBadRequest, "no entries"},
		{"MalformedZstd", "n", badZstd, image.BuildOptions{}, api.ErrBadRequest, "zstd"},
		{"TruncatedZstd", "n", zstdGood[:len(zstdGood)/2], image.BuildOptions{}, api.ErrBadRequest, "zstd"},
		{"BadGzip", "n", []byte{0x1f, 0x8b, 0, 0}, image.BuildOptions{}, api.ErrBadRequest, "gzip"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.store.ImportTar(ctx, c.image, bytes.NewReader(c.data), c.opts)
			if !errors.Is(err, c.class) || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("got %v, want %v saying %q", err, c.class, c.says)
			}
			e.assertStoreHolds(t)
		})
	}

	t.Run("MissingAgent", func(t *testing.T) {
		s, err := image.NewStore(e.dir, runner, nil, filepath.Join(t.TempDir(), "absent"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.ImportTar(ctx, "n", bytes.NewReader(good), image.BuildOptions{})
		if !errors.Is(err, api.ErrFailedPrecondition) || !strings.Contains(err.Error(), "kiln-agent binary") || api.HintOf(err) == "" {
			t.Fatalf("got %v (hint %q), want a failed precondition about the agent with a hint", err, api.HintOf(err))
		}
		e.assertStoreHolds(t)
	})

	t.Run("CancelledMidway", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		data := tarOf(t, map[string]string{"a": string(big), "b": string(big)})
		r := &cancelAt{r: bytes.NewReader(data), at: 30 << 20, cancel: cancel}
		_, err := e.store.ImportTar(ctx, "n", r, image.BuildOptions{})
		if !errors.Is(err, context.Canceled) || api.ClassOf(err) != api.ClassCanceled {
			t.Fatalf("got %v (class %s), want cancelled", err, api.ClassOf(err))
		}
		e.assertStoreHolds(t)
	})
}

// cancelAt cancels its context once at bytes have been read through it.
type cancelAt struct {
	r      io.Reader
	n, at  int
	cancel func()
}

func (c *cancelAt) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	if c.n += k; c.n >= c.at {
		c.cancel()
	}
	return k, err
}

func TestConcurrentImportsOfOneName(t *testing.T) {
	e := newEnv(t)
	data := tarOf(t, map[string]string{"etc/": "", "etc/x": "x"})
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = e.store.ImportTar(context.Background(), "same", bytes.NewReader(data), image.BuildOptions{Size: 32 << 20})
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
		t.Fatalf("%d of 3 concurrent imports succeeded, want exactly 1 (%v)", ok, errs)
	}
	e.assertStoreHolds(t, "same")
}

func TestImportDir(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	src := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "home/u"), 0o755))
	must(os.WriteFile(filepath.Join(src, "home/u/notes"), []byte("mine"), 0o600))
	must(os.Chown(filepath.Join(src, "home/u/notes"), 1000, 1001))
	must(os.WriteFile(filepath.Join(src, "su"), []byte("#!/bin/sh\n"), 0o755))
	must(os.Chmod(filepath.Join(src, "su"), 0o755|os.ModeSetuid))
	must(os.Link(filepath.Join(src, "su"), filepath.Join(src, "su2")))
	must(os.Symlink("/etc/passwd", filepath.Join(src, "passwd-link")))
	must(unix.Mkfifo(filepath.Join(src, "fifo"), 0o600))
	must(unix.Setxattr(filepath.Join(src, "su"), "user.kiln", []byte("v"), 0))
	// A mount point inside the tree is copied empty.
	must(os.Mkdir(filepath.Join(src, "mnt"), 0o755))
	if out, err := exec.Command("mount", "-t", "tmpfs", "tmpfs", filepath.Join(src, "mnt")).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", filepath.Join(src, "mnt")).Run() })
	must(os.WriteFile(filepath.Join(src, "mnt/hidden"), []byte("x"), 0o644))

	img, err := e.store.ImportDir(ctx, "fromdir", src, image.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img.Source != "dir:"+src {
		t.Errorf("source %q", img.Source)
	}
	notes := stat(t, img.RootFS, "/home/u/notes")
	if notes.UID != 1000 || notes.GID != 1001 || notes.Mode != 0o600 {
		t.Errorf("notes %+v", notes)
	}
	su := stat(t, img.RootFS, "/su")
	if su.Mode != 0o4755 || su.Links != 2 || stat(t, img.RootFS, "/su2").Inode != su.Inode {
		t.Errorf("su %+v: want setuid with two links", su)
	}
	if l := stat(t, img.RootFS, "/passwd-link"); l.LinkTarget != "/etc/passwd" {
		t.Errorf("symlink %+v", l)
	}
	if f := stat(t, img.RootFS, "/fifo"); f.Type != "FIFO" {
		t.Errorf("fifo %+v", f)
	}
	if _, err := disk.StatExt4(ctx, runner, img.RootFS, "/mnt/hidden"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("content of a mount point was copied: %v", err)
	}
	if out, err := system.Command(ctx, runner, "debugfs", "-R", "ea_get /su user.kiln", img.RootFS); err != nil || !strings.Contains(string(out), "v") {
		t.Errorf("xattr on /su: %q, %v", out, err)
	}
	if data, _ := os.ReadFile(filepath.Join(src, "home/u/notes")); string(data) != "mine" {
		t.Error("source tree changed")
	}

	t.Run("Failures", func(t *testing.T) {
		file := filepath.Join(src, "su")
		for _, c := range []struct {
			dir   string
			class error
		}{
			{filepath.Join(src, "absent"), api.ErrNotFound},
			{file, api.ErrBadRequest},
			{filepath.Dir(e.dir), api.ErrBadRequest}, // holds the store itself
		} {
			if _, err := e.store.ImportDir(ctx, "bad", c.dir, image.BuildOptions{}); !errors.Is(err, c.class) {
				t.Errorf("import %s: got %v, want %v", c.dir, err, c.class)
			}
		}
		e.assertStoreHolds(t, "fromdir")
	})
}

func TestNewStoreRemovesLeftovers(t *testing.T) {
	e := newEnv(t)
	staging := filepath.Join(e.dir, ".staging-x-123")
	proc := filepath.Join(staging, "tree", "proc")
	if err := os.MkdirAll(proc, 0o755); err != nil {
		t.Fatal(err)
	}
	// As an interrupted debootstrap leaves it: a filesystem mounted inside.
	if out, err := exec.Command("mount", "-t", "tmpfs", "tmpfs", proc).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", proc).Run() })
	if err := os.WriteFile(filepath.Join(proc, "keep-out"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(e.dir, ".removing-y-1", "y"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := image.NewStore(e.dir, runner, nil, e.agent); err != nil {
		t.Fatal(err)
	}
	e.assertStoreHolds(t)
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), staging) {
		t.Fatal("mount inside the leftover is still there")
	}
}

func TestGetAndRemoveValidateNames(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, n := range []string{"", "../x", "A", ".staging-x"} {
		if _, err := e.store.Get(ctx, n); !errors.Is(err, api.ErrBadRequest) {
			t.Errorf("Get(%q): %v", n, err)
		}
		if err := e.store.Remove(ctx, n); !errors.Is(err, api.ErrBadRequest) {
			t.Errorf("Remove(%q): %v", n, err)
		}
	}
	if _, err := e.store.Get(ctx, "absent"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("Get(absent): %v", err)
	}
}
