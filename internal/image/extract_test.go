package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/testutil"
)

// ent is one archive entry for tests; body is the content of a regular file.
type ent struct {
	tar.Header
	body string
}

func reg(name, body string) ent {
	return ent{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body))}, body: body}
}
func dirEnt(name string, mode int64) ent {
	return ent{Header: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
}
func symlinkEnt(name, target string) ent {
	return ent{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}
func linkEnt(name, target string) ent {
	return ent{Header: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target}}
}

func tarOf(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := e.Header
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1600000000, 0)
		}
		if h.Format == tar.FormatUnknown {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("write header %s: %v", h.Name, err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// sandbox is a destination tree next to a directory with a sentinel file
// that no extraction may touch.
type sandbox struct {
	base, root, outside, sentinel string
}

const sentinelContent = "host file: must never change\n"

func newSandbox(t testing.TB) sandbox {
	t.Helper()
	base := t.TempDir()
	s := sandbox{base: base, root: filepath.Join(base, "root"), outside: filepath.Join(base, "outside")}
	s.sentinel = filepath.Join(s.outside, "sentinel")
	for _, d := range []string{s.root, s.outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(s.sentinel, []byte(sentinelContent), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

// checkOutside fails unless the only things outside root are the untouched
// sentinel and its directory.
func (s sandbox) checkOutside(t testing.TB) {
	t.Helper()
	err := filepath.WalkDir(s.base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == s.root {
			return fs.SkipDir
		}
		if p != s.base && p != s.outside && p != s.sentinel {
			t.Errorf("extraction wrote outside its root: %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(s.sentinel)
	if err != nil || string(data) != sentinelContent {
		t.Fatalf("sentinel outside the root changed: %q, %v", data, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(s.sentinel, &st); err != nil || st.Nlink != 1 {
		t.Fatalf("sentinel gained hard links (nlink %d, %v)", st.Nlink, err)
	}
}

func TestExtractRejects(t *testing.T) {
	testutil.RequireRoot(t)
	cases := []struct {
		name  string
		ents  []ent
		lim   Limits
		entry string // the entry the error must name
		why   string // a phrase the error must contain
	}{
		{"DotDot", []ent{reg("../evil", "x")}, Limits{}, "../evil", `".." component`},
		{"NestedDotDot", []ent{dirEnt("a/", 0o755), reg("a/../../evil", "x")}, Limits{}, "a/../../evil", `".."`},
		{"Absolute", []ent{reg("/etc/evil", "x")}, Limits{}, "/etc/evil", "absolute"},
		{"HardlinkOutside", []ent{linkEnt("h", "../outside/sentinel")}, Limits{}, "h", `".." component`},
		{"HardlinkAbsolute", []ent{linkEnt("h", "/etc/passwd")}, Limits{}, "h", "absolute"},
		{"HardlinkNotExtracted", []ent{linkEnt("h", "etc/passwd")}, Limits{}, "h", "not a regular file extracted earlier"},
		{"HardlinkToSymlink", []ent{symlinkEnt("s", "/etc/passwd"), linkEnt("h", "s")}, Limits{}, "h", "not a regular file extracted earlier"},
		{"HardlinkThroughSymlinkDir", []ent{symlinkEnt("d", "../outside"), linkEnt("h", "d/sentinel")}, Limits{}, "h", "not a regular file extracted earlier"},
		{"HardlinkToItself", []ent{reg("f", "x"), linkEnt("f", "f")}, Limits{}, "f", "not a file"},
		{"ReplaceDirWithFile", []ent{dirEnt("d/", 0o755), reg("d/x", "x"), reg("d", "x")}, Limits{}, "d", "would replace the directory"},
		{"FileThroughDanglingSymlink", []ent{symlinkEnt("l", "../../outside"), reg("l/evil", "x")}, Limits{}, "l/evil", "not a directory"},
		{"TooManyEntries", []ent{reg("a", ""), reg("b", ""), reg("c", "")}, Limits{MaxEntries: 2}, "", "more than 2 entries"},
		{"FileTooBig", []ent{reg("big", strings.Repeat("x", 100))}, Limits{MaxFileSize: 99}, "big", "limit of 99 bytes per file"},
		{"TotalTooBig", []ent{reg("a", strings.Repeat("x", 60)), reg("b", strings.Repeat("x", 60))}, Limits{MaxTotalSize: 100}, "b", "limit of 100 bytes"},
		{"FileAsTop", []ent{reg(".", "")}, Limits{}, ".", "top"},
		{"EmptySymlink", []ent{symlinkEnt("s", "")}, Limits{}, "s", "invalid symlink target"},
		{"DeviceNumber", []ent{{Header: tar.Header{Typeflag: tar.TypeChar, Name: "c", Devmajor: 1 << 20}}}, Limits{}, "c", "out of range"},
		{"UnsupportedType", []ent{{Header: tar.Header{Typeflag: 'Z', Name: "z"}}}, Limits{}, "z", "unsupported entry type"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newSandbox(t)
			_, err := Extract(context.Background(), bytes.NewReader(tarOf(t, c.ents...)), s.root, c.lim)
			if !errors.Is(err, api.ErrBadRequest) {
				t.Fatalf("got %v, want a bad request", err)
			}
			if c.entry != "" && !strings.Contains(err.Error(), `"`+c.entry+`"`) {
				t.Errorf("error %q does not name the entry %q", err, c.entry)
			}
			if !strings.Contains(err.Error(), c.why) {
				t.Errorf("error %q does not say %q", err, c.why)
			}
			s.checkOutside(t)
		})
	}
}

func TestExtractMalformedArchive(t *testing.T) {
	testutil.RequireRoot(t)
	good := tarOf(t, reg("a", strings.Repeat("y", 5000)))
	cases := map[string][]byte{
		"Garbage":   bytes.Repeat([]byte("not a tar archive "), 100),
		"Truncated": good[:512+1000],
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			s := newSandbox(t)
			_, err := Extract(context.Background(), bytes.NewReader(data), s.root, Limits{})
			if !errors.Is(err, api.ErrBadRequest) {
				t.Fatalf("got %v, want bad request", err)
			}
			s.checkOutside(t)
		})
	}
}

// failingReader fails after n bytes, like a dropped download.
type failingReader struct {
	r *bytes.Reader
	n int
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("connection reset")
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	k, err := f.r.Read(p)
	f.n -= k
	return k, err
}

func TestExtractSourceErrorIsNotBadRequest(t *testing.T) {
	testutil.RequireRoot(t)
	s := newSandbox(t)
	data := tarOf(t, reg("a", strings.Repeat("y", 5000)), reg("b", "z"))
	_, err := Extract(context.Background(), &failingReader{r: bytes.NewReader(data), n: 2000}, s.root, Limits{})
	if err == nil || errors.Is(err, api.ErrBadRequest) || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("got %v, want the reader's own error, not a bad request", err)
	}
}

func TestExtractSymlinksStayInside(t *testing.T) {
	testutil.RequireRoot(t)
	s := newSandbox(t)
	ents := []ent{
		// An absolute symlink to the host directory holding the sentinel,
		// then a file written "through" it: it must land inside the root,
		// in the tree's own directory of that name.
		dirEnt(strings.TrimPrefix(s.outside, "/")+"/", 0o755),
		symlinkEnt("hostdir", s.outside),
		reg("hostdir/sentinel", "overwritten?"),
		// A relative symlink climbing out: ".." stops at the root.
		dirEnt("a/", 0o755),
		symlinkEnt("a/up", "../../../../.."),
		reg("a/up/escaped", "here"),
		// A symlink as the last component is replaced, not followed.
		symlinkEnt("last", s.sentinel),
		reg("last", "replaced"),
		// Merged /usr: lib -> usr/lib, then an entry under lib/.
		dirEnt("usr/lib/", 0o755),
		symlinkEnt("lib", "usr/lib"),
		reg("lib/libc.so", "libc"),
	}
	if _, err := Extract(context.Background(), bytes.NewReader(tarOf(t, ents...)), s.root, Limits{}); err != nil {
		t.Fatal(err)
	}
	s.checkOutside(t)
	for p, want := range map[string]string{
		filepath.Join(strings.TrimPrefix(s.outside, "/"), "sentinel"): "overwritten?",
		"escaped":         "here",
		"last":            "replaced",
		"usr/lib/libc.so": "libc",
	} {
		got, err := os.ReadFile(filepath.Join(s.root, p))
		if err != nil || string(got) != want {
			t.Errorf("%s: got %q (%v), want %q", p, got, err, want)
		}
	}
	if fi, err := os.Lstat(filepath.Join(s.root, "last")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("last: %v %v, want a regular file", fi, err)
	}
}

func TestExtractKeepsMetadata(t *testing.T) {
	testutil.RequireRoot(t)
	s := newSandbox(t)
	mtime := time.Date(2010, 5, 6, 7, 8, 9, 0, time.UTC)
	dirTime := time.Date(2011, 1, 1, 0, 0, 0, 0, time.UTC)
	suid := reg("usr/bin/su", "#!/bin/sh\n")
	suid.Mode, suid.Uid, suid.Gid, suid.ModTime = 0o4755, 0, 0, mtime
	owned := reg("home/u/file", "mine")
	owned.Mode, owned.Uid, owned.Gid = 0o600, 1000, 1001
	sgid := dirEnt("var/mail/", 0o2775)
	sgid.Gid = 8
	tmp := dirEnt("tmp/", 0o1777)
	tmp.ModTime = dirTime
	xattr := reg("x", "x")
	xattr.PAXRecords = map[string]string{"SCHILY.xattr.user.kiln": "value"}
	ents := []ent{
		tmp, reg("tmp/inside", "changes tmp's mtime"),
		suid, owned, sgid, xattr,
		reg("data/f", "shared"), linkEnt("data/g", "data/f"),
		{Header: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		{Header: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/loop9", Mode: 0o660, Gid: 6, Devmajor: 7, Devminor: 9}},
		{Header: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o620}},
		reg("sparse", "\x00"+strings.Repeat("\x00", 3<<20)+"end"),
	}
	st, err := Extract(context.Background(), bytes.NewReader(tarOf(t, ents...)), s.root, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != 6 || st.Hardlinks != 1 || st.Devices != 2 || st.Fifos != 1 || st.Dirs != 2 {
		t.Errorf("stats %+v", st)
	}
	check := func(p string, typ, perm uint32, uid, gid int) unix.Stat_t {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(s.root, p), &st); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if st.Mode&unix.S_IFMT != typ || st.Mode&0o7777 != perm || int(st.Uid) != uid || int(st.Gid) != gid {
			t.Errorf("%s: mode %#o owner %d:%d, want type %#o mode %#o owner %d:%d", p, st.Mode, st.Uid, st.Gid, typ, perm, uid, gid)
		}
		return st
	}
	if st := check("usr/bin/su", unix.S_IFREG, 0o4755, 0, 0); st.Mtim.Sec != mtime.Unix() {
		t.Errorf("su mtime %d, want %d", st.Mtim.Sec, mtime.Unix())
	}
	check("home/u/file", unix.S_IFREG, 0o600, 1000, 1001)
	check("home/u", unix.S_IFDIR, 0o755, 0, 0) // implied parent
	check("var/mail", unix.S_IFDIR, 0o2775, 0, 8)
	if st := check("tmp", unix.S_IFDIR, 0o1777, 0, 0); st.Mtim.Sec != dirTime.Unix() {
		t.Errorf("tmp mtime %d, want %d (set after its content)", st.Mtim.Sec, dirTime.Unix())
	}
	f := check("data/f", unix.S_IFREG, 0o644, 0, 0)
	g := check("data/g", unix.S_IFREG, 0o644, 0, 0)
	if f.Ino != g.Ino || f.Nlink != 2 {
		t.Errorf("hard link: inodes %d and %d, nlink %d", f.Ino, g.Ino, f.Nlink)
	}
	if st := check("dev/null", unix.S_IFCHR, 0o666, 0, 0); unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
		t.Errorf("dev/null is %d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	if st := check("dev/loop9", unix.S_IFBLK, 0o660, 0, 6); unix.Major(st.Rdev) != 7 || unix.Minor(st.Rdev) != 9 {
		t.Errorf("dev/loop9 is %d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	check("run/fifo", unix.S_IFIFO, 0o620, 0, 0)
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(s.root, "x"), "user.kiln", buf); err != nil || string(buf[:n]) != "value" {
		t.Errorf("xattr user.kiln: %q, %v", buf[:n], err)
	}
	if sp := check("sparse", unix.S_IFREG, 0o644, 0, 0); sp.Size != 3<<20+4 || sp.Blocks*512 > 64<<10 {
		t.Errorf("sparse: size %d, allocated %d: zeros should be holes", sp.Size, sp.Blocks*512)
	}
	s.checkOutside(t)
}

func TestExtractLayersShareHardlinkTargets(t *testing.T) {
	testutil.RequireRoot(t)
	s := newSandbox(t)
	x, err := NewExtractor(s.root, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := x.Apply(ctx, bytes.NewReader(tarOf(t, reg("bin/tool", "v1")))); err != nil {
		t.Fatal(err)
	}
	if err := x.Apply(ctx, bytes.NewReader(tarOf(t, linkEnt("bin/alias", "bin/tool")))); err != nil {
		t.Fatalf("hard link to a file of an earlier layer: %v", err)
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(s.root, "bin/alias")); string(got) != "v1" {
		t.Fatalf("alias reads %q", got)
	}
}

func TestExtractCancelled(t *testing.T) {
	testutil.RequireRoot(t)
	s := newSandbox(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Extract(ctx, bytes.NewReader(tarOf(t, reg("a", "x"))), s.root, Limits{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestCleanEntryName(t *testing.T) {
	for in, want := range map[string]string{
		"./": "", ".": "", "a": "a", "./a/b/": "a/b", "a//b": "a/b", "a/./b": "a/b", "..a": "..a", "a..": "a..",
	} {
		got, err := CleanEntryName(in)
		if err != nil || got != want {
			t.Errorf("CleanEntryName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "/", "/a", "..", "../a", "a/..", "a/../b", "a/b/../../..", "a\x00b"} {
		if got, err := CleanEntryName(in); err == nil {
			t.Errorf("CleanEntryName(%q) = %q, want an error", in, got)
		}
	}
}

// FuzzExtract feeds arbitrary bytes (seeded with hostile archives) to the
// extractor: it must never panic and never create, change or link
// anything outside its destination.
func FuzzExtract(f *testing.F) {
	seeds := [][]ent{
		{reg("a", "x"), dirEnt("d/", 0o755), reg("d/f", "y"), linkEnt("d/g", "d/f")},
		{reg("../evil", "x")},
		{symlinkEnt("l", "/"), reg("l/tmp/x", "y")},
		{symlinkEnt("l", "../outside"), reg("l/sentinel", "pwned")},
		{symlinkEnt("l", "../outside/sentinel"), linkEnt("h", "l")},
		{symlinkEnt("s", "../outside/sentinel"), reg("s", "replace")},
		{dirEnt("d/", 0o755), symlinkEnt("d/up", "../../outside"), reg("d/up/sentinel", "z")},
		{{Header: tar.Header{Typeflag: tar.TypeFifo, Name: "p", Mode: 0o600}}, reg("p", "x")},
		{{Header: tar.Header{Typeflag: tar.TypeChar, Name: "c", Mode: 0o600, Devmajor: 1, Devminor: 3}}, linkEnt("h", "c")},
	}
	for _, s := range seeds {
		f.Add(tarOf(f, s...))
	}
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := newSandbox(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		Extract(ctx, bytes.NewReader(data), s.root, Limits{MaxEntries: 200, MaxFileSize: 1 << 20, MaxTotalSize: 4 << 20})
		s.checkOutside(t)
	})
}
