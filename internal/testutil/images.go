package testutil

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// What the busybox rootfs fixture holds, for tests that look inside it.
const (
	// BusyboxSetuidPath is a root-owned 04755 file (a tiny script) for
	// checking that set-id bits and owners survive into a VM.
	BusyboxSetuidPath = "/usr/local/bin/kiln-suid-probe"
	// BusyboxShadowMode is the mode of /etc/shadow (owned root:root).
	BusyboxShadowMode = 0o640
	// BusyboxMarkerPath holds BusyboxMarker, to recognise the image.
	BusyboxMarkerPath = "/etc/kiln-fixture"
	BusyboxMarker     = "kiln busybox rootfs fixture v1\n"
)

// BusyboxRootfsTar returns a plain tarball of a tiny root filesystem built
// around the host's static busybox (package busybox-static): /bin/busybox
// with a symlink for every applet where busybox would install it (sh, cat,
// mount, stty, ...), /etc/passwd, /etc/group and /etc/shadow (0640) with
// root, /root, /tmp (1777), /dev/console and /dev/null, the setuid file
// BusyboxSetuidPath, and empty /proc, /sys, /run. It has no init: the kiln
// agent stays PID 1 in it. Every entry is owned by root; the archive is
// deterministic (sorted, fixed times) and cached under CacheDir, keyed by
// the busybox binary.
func BusyboxRootfsTar(t testing.TB) string {
	t.Helper()
	const bin = "/bin/busybox"
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Skipf("needs %s (apt-get install busybox-static): %v", bin, err)
	}
	if !isStatic(data) {
		t.Fatalf("%s is dynamically linked; install busybox-static", bin)
	}
	sum := sha256.Sum256(data)
	name := fmt.Sprintf("busybox-rootfs-v1-%x.tar", sum[:6])
	path := filepath.Join(CacheDir(t), name)
	WithLock(t, "busybox-rootfs", func() error {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		out, err := exec.Command(bin, "--list-full").Output()
		if err != nil {
			return fmt.Errorf("busybox --list-full: %v", err)
		}
		tarData, err := busyboxTar(data, strings.Fields(string(out)))
		if err != nil {
			return err
		}
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, tarData, 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, path)
	})
	return path
}

func isStatic(bin []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

type fixtureEntry struct {
	hdr  tar.Header
	body []byte
}

func busyboxTar(busybox []byte, applets []string) ([]byte, error) {
	mtime := time.Unix(1700000000, 0)
	entries := map[string]fixtureEntry{}
	dir := func(name string, mode int64) {
		entries[name] = fixtureEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}}
	}
	file := func(name string, mode int64, body string) {
		entries[name] = fixtureEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body))}, body: []byte(body)}
	}
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "usr/local", "usr/local/bin",
		"etc", "dev", "proc", "sys", "run", "var", "var/tmp", "home"} {
		dir(d, 0o755)
	}
	dir("root", 0o700)
	dir("tmp", 0o1777)
	entries["bin/busybox"] = fixtureEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(busybox))}, body: busybox}
	for _, a := range applets {
		if a == "bin/busybox" || !strings.Contains(a, "/") {
			continue // "linuxrc" and the like
		}
		if _, ok := entries[a]; ok {
			continue
		}
		entries[a] = fixtureEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: a, Linkname: "/bin/busybox", Mode: 0o777}}
	}
	file("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
	file("etc/group", 0o644, "root:x:0:\nshadow:x:42:\nnogroup:x:65534:\n")
	file("etc/shadow", BusyboxShadowMode, "root:*:19700:0:99999:7:::\nnobody:*:19700:0:99999:7:::\n")
	file("etc/hosts", 0o644, "127.0.0.1\tlocalhost\n::1\tlocalhost\n")
	file(strings.TrimPrefix(BusyboxMarkerPath, "/"), 0o644, BusyboxMarker)
	file(strings.TrimPrefix(BusyboxSetuidPath, "/"), 0o4755, "#!/bin/sh\nid\n")
	entries["dev/console"] = fixtureEntry{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/console", Mode: 0o600, Devmajor: 5, Devminor: 1}}
	entries["dev/null"] = fixtureEntry{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}}

	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	// Sorting full paths puts every directory before its content.
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := entries[n]
		e.hdr.Uid, e.hdr.Gid, e.hdr.Uname, e.hdr.Gname = 0, 0, "root", "root"
		e.hdr.ModTime = mtime
		e.hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return nil, fmt.Errorf("fixture entry %s: %w", n, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, fmt.Errorf("fixture entry %s: %w", n, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
