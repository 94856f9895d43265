package cpio

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/testutil"
)

// sample writes a small archive exercising every entry kind.
func sample(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.WriteDir("/etc", 0o755))
	must(w.MkdirAll("/lib/modules/6.1.0", 0o700))
	must(w.WriteDir("tmp", os.ModeDir|os.ModeSticky|0o777))
	must(w.WriteFile("/etc/hostname", 0o644, []byte("box\n")))
	must(w.WriteFile("/etc/empty", 0o600, nil))
	must(w.WriteFile("/etc/secret", os.ModeSetuid|0o750, []byte("12345")))
	big := bytes.Repeat([]byte("kiln"), 10000) // streamed, not a multiple of 4 + 3
	big = append(big, "abc"...)
	must(w.WriteFileFrom("lib/modules/6.1.0/big.ko", 0o644, int64(len(big)), iotest.OneByteReader(bytes.NewReader(big))))
	must(w.WriteSymlink("/bin", "usr/bin"))
	must(w.Close())
	return buf.Bytes()
}

func TestRoundTripThroughGNUCpio(t *testing.T) {
	testutil.RequireCommand(t, "cpio")
	data := sample(t)
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-i", "-d", "-m", "-v", "--no-absolute-filenames")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -idmv: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "warning") || strings.Contains(string(out), "junk") {
		t.Errorf("cpio complained:\n%s", out)
	}

	wantFiles := map[string]string{
		"etc/hostname": "box\n",
		"etc/empty":    "",
		"etc/secret":   "12345",
	}
	for name, want := range wantFiles {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	big, err := os.ReadFile(filepath.Join(dir, "lib/modules/6.1.0/big.ko"))
	if err != nil {
		t.Fatal(err)
	}
	if len(big) != 40003 || !bytes.HasSuffix(big, []byte("kilnabc")) {
		t.Errorf("big.ko: %d bytes, suffix %q", len(big), big[len(big)-7:])
	}
	if target, err := os.Readlink(filepath.Join(dir, "bin")); err != nil || target != "usr/bin" {
		t.Errorf("bin -> %q, %v; want usr/bin", target, err)
	}

	wantModes := map[string]os.FileMode{
		"etc":                      os.ModeDir | 0o755,
		"lib":                      os.ModeDir | 0o700,
		"lib/modules/6.1.0":        os.ModeDir | 0o700,
		"tmp":                      os.ModeDir | os.ModeSticky | 0o777,
		"etc/hostname":             0o644,
		"etc/empty":                0o600,
		"lib/modules/6.1.0/big.ko": 0o644,
	}
	if os.Geteuid() == 0 {
		// Only root may keep a setuid bit through extraction.
		wantModes["etc/secret"] = os.ModeSetuid | 0o750
	}
	for name, want := range wantModes {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode(), want)
		}
		if !fi.IsDir() && fi.ModTime().Unix() != 0 {
			t.Errorf("%s: mtime %v, want the epoch", name, fi.ModTime())
		}
		if os.Geteuid() == 0 {
			st := fi.Sys().(*syscall.Stat_t)
			if st.Uid != 0 || st.Gid != 0 {
				t.Errorf("%s: owner %d:%d, want 0:0", name, st.Uid, st.Gid)
			}
		}
	}
}

// header is a parsed newc header, for checking what GNU cpio does not show.
type header struct {
	name                                        string
	ino, mode, uid, gid, nlink, mtime, size, ck uint64
	offset                                      int
}

func parse(t *testing.T, data []byte) []header {
	t.Helper()
	var hs []header
	off := 0
	for {
		if off%4 != 0 {
			t.Fatalf("header at unaligned offset %d", off)
		}
		if off+110 > len(data) || string(data[off:off+6]) != "070701" {
			t.Fatalf("no newc header at %d", off)
		}
		field := func(i int) uint64 {
			v, err := strconv.ParseUint(string(data[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("field %d at %d: %v", i, off, err)
			}
			return v
		}
		h := header{ino: field(0), mode: field(1), uid: field(2), gid: field(3), nlink: field(4),
			mtime: field(5), size: field(6), ck: field(12), offset: off}
		namesize := int(field(11))
		h.name = string(data[off+110 : off+110+namesize-1])
		if data[off+110+namesize-1] != 0 {
			t.Fatalf("%s: name not NUL-terminated", h.name)
		}
		hs = append(hs, h)
		off += 110 + namesize
		off += pad(off)
		off += int(h.size)
		off += pad(off)
		if h.name == "TRAILER!!!" {
			if off != len(data) {
				t.Fatalf("%d bytes after the trailer", len(data)-off)
			}
			return hs
		}
	}
}

func TestHeaders(t *testing.T) {
	data := sample(t)
	if len(data)%4 != 0 {
		t.Errorf("archive length %d not 4-byte aligned: another archive could not follow", len(data))
	}
	hs := parse(t, data)
	wantNames := []string{"etc", "lib", "lib/modules", "lib/modules/6.1.0", "tmp", "etc/hostname",
		"etc/empty", "etc/secret", "lib/modules/6.1.0/big.ko", "bin", "TRAILER!!!"}
	if len(hs) != len(wantNames) {
		t.Fatalf("%d entries, want %d", len(hs), len(wantNames))
	}
	for i, h := range hs {
		if h.name != wantNames[i] {
			t.Errorf("entry %d: %q, want %q", i, h.name, wantNames[i])
		}
		if h.uid != 0 || h.gid != 0 || h.mtime != 0 || h.ck != 0 {
			t.Errorf("%s: uid %d gid %d mtime %d check %d, want all 0", h.name, h.uid, h.gid, h.mtime, h.ck)
		}
		wantIno := uint64(i + 1)
		if h.name == "TRAILER!!!" {
			wantIno = 0
		}
		if h.ino != wantIno {
			t.Errorf("%s: ino %d, want %d", h.name, h.ino, wantIno)
		}
	}
	if hs[0].mode != 0o40755 || hs[5].mode != 0o100644 || hs[7].mode != 0o104750 || hs[9].mode != 0o120777 {
		t.Errorf("modes %o %o %o %o", hs[0].mode, hs[5].mode, hs[7].mode, hs[9].mode)
	}
	if hs[9].size != uint64(len("usr/bin")) {
		t.Errorf("symlink size %d", hs[9].size)
	}
	// Determinism: the same calls give the same bytes.
	if !bytes.Equal(data, sample(t)) {
		t.Error("two identical archives differ")
	}
}

func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		call func(w *Writer) error
	}{
		{"empty path", func(w *Writer) error { return w.WriteFile("", 0o644, nil) }},
		{"root only", func(w *Writer) error { return w.WriteDir("/", 0o755) }},
		{"dot", func(w *Writer) error { return w.WriteDir(".", 0o755) }},
		{"dotdot", func(w *Writer) error { return w.WriteFile("../etc/passwd", 0o644, nil) }},
		{"inner dotdot", func(w *Writer) error { return w.WriteFile("/a/../../b", 0o644, nil) }},
		{"trailing dotdot", func(w *Writer) error { return w.MkdirAll("a/..", 0o755) }},
		{"not canonical", func(w *Writer) error { return w.WriteFile("a//b", 0o644, nil) }},
		{"trailing slash", func(w *Writer) error { return w.WriteDir("a/", 0o755) }},
		{"NUL", func(w *Writer) error { return w.WriteFile("a\x00b", 0o644, nil) }},
		{"trailer name", func(w *Writer) error { return w.WriteFile("TRAILER!!!", 0o644, nil) }},
		{"dir mode on file", func(w *Writer) error { return w.WriteFile("f", os.ModeDir|0o755, nil) }},
		{"device mode", func(w *Writer) error { return w.WriteFile("f", os.ModeDevice|0o644, nil) }},
		{"empty symlink target", func(w *Writer) error { return w.WriteSymlink("l", "") }},
		{"negative size", func(w *Writer) error { return w.WriteFileFrom("f", 0o644, -1, strings.NewReader("")) }},
		{"huge size", func(w *Writer) error { return w.WriteFileFrom("f", 0o644, 1<<32, strings.NewReader("")) }},
		{"duplicate", func(w *Writer) error {
			if err := w.WriteFile("f", 0o644, nil); err != nil {
				return nil // the test wants an error from the second write only
			}
			return w.WriteFile("/f", 0o644, nil)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := NewWriter(&buf)
			err := tc.call(w)
			if !errors.Is(err, api.ErrBadRequest) {
				t.Fatalf("err = %v, want a bad_request", err)
			}
			// Nothing was written for the rejected entry, and the writer
			// still works.
			n := buf.Len()
			if err := w.WriteFile("ok", 0o644, []byte("x")); err != nil {
				t.Fatalf("writer unusable after a rejected entry: %v", err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			hs := parse(t, buf.Bytes())
			if hs[len(hs)-2].name != "ok" || (tc.name != "duplicate" && n != 0) {
				t.Errorf("rejected entry left bytes: %d before, entries %v", n, hs)
			}
		})
	}
}

func TestSizeMismatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int64
		data string
		want string
	}{
		{"short", 10, "abc", "source ended after 3 of 10 bytes"},
		{"long", 2, "abc", "more than the declared 2 bytes"},
		{"long empty", 0, "a", "more than the declared 0 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := NewWriter(io.Discard)
			err := w.WriteFileFrom("f", 0o644, tc.size, strings.NewReader(tc.data))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			// The stream is broken: the writer refuses to go on, Close too.
			if err2 := w.WriteDir("d", 0o755); err2 == nil {
				t.Error("write after a broken entry succeeded")
			}
			if err2 := w.Close(); err2 == nil {
				t.Error("Close after a broken entry succeeded")
			}
		})
	}
}

type failWriter struct{ after int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.after <= 0 {
		return 0, errors.New("disk full")
	}
	f.after--
	return len(p), nil
}

func TestWriteErrorIsSticky(t *testing.T) {
	w := NewWriter(&failWriter{after: 1})
	if err := w.WriteDir("a", 0o755); err != nil {
		t.Fatal(err)
	}
	err := w.WriteFile("a/b", 0o644, []byte("x"))
	if err == nil || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), `"a/b"`) {
		t.Fatalf("err = %v, want the write error naming the entry", err)
	}
	if err := w.Close(); err == nil {
		t.Fatal("Close succeeded after a failed write")
	}
}

func TestClosed(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	n := buf.Len()
	if err := w.WriteDir("a", 0o755); !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
	if err := w.Close(); err != nil || buf.Len() != n {
		t.Fatalf("second Close: %v, %d bytes more", err, buf.Len()-n)
	}
	if hs := parse(t, buf.Bytes()); len(hs) != 1 {
		t.Fatalf("empty archive has %d entries", len(hs))
	}
}

func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"a", "/a/b", "../a", "a/..", "a//b", ".", "", "a/./b", "/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := cleanPath(s)
		if err != nil {
			return
		}
		if p == "" || strings.HasPrefix(p, "/") || strings.Contains(p, "\x00") || filepath.Clean(p) != p ||
			p == ".." || strings.HasPrefix(p, "../") || strings.Contains(p, "/../") || strings.HasSuffix(p, "/..") {
			t.Fatalf("cleanPath(%q) = %q accepted", s, p)
		}
	})
}
