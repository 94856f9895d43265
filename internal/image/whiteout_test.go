package image

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func whiteoutEnt(name string) ent { return reg(name, "") }

// FuzzFlatten applies a fixed lower layer (directories, a symlink out of
// the tree, a hard-linked file) and then a fuzzed upper layer with OCI
// whiteouts: whatever the upper layer holds, nothing outside the tree
// changes and no whiteout marker is left in it.
func FuzzFlatten(f *testing.F) {
	seeds := [][]ent{
		{whiteoutEnt(".wh.d"), reg("d", "now a file")},
		{whiteoutEnt("d/.wh..wh..opq"), reg("d/new", "n")},
		{whiteoutEnt("out/.wh.sentinel")},
		{whiteoutEnt("up/.wh.outside")},
		{whiteoutEnt(".wh.out"), reg("out", "x")},
		{whiteoutEnt("up/outside/.wh..wh..opq")},
		{whiteoutEnt(".wh.."), whiteoutEnt("d/.wh..wh.plnk")},
		{reg("d/x", "same layer"), whiteoutEnt("d/.wh.x")},
		{whiteoutEnt("d/.wh.f"), linkEnt("h2", "d/f")},
		{whiteoutEnt(".wh..wh..opq")},
		{symlinkEnt("d", "../outside"), reg("d/sentinel", "pwned")},
	}
	for _, s := range seeds {
		f.Add(tarOf(f, s...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := newSandbox(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		x, err := NewExtractor(s.root, Limits{MaxEntries: 200, MaxFileSize: 1 << 20, MaxTotalSize: 4 << 20})
		if err != nil {
			t.Fatal(err)
		}
		lower := tarOf(t, dirEnt("d/", 0o755), reg("d/f", "f"), linkEnt("d/g", "d/f"),
			symlinkEnt("out", "../outside"), symlinkEnt("up", "../../.."))
		if err := x.ApplyLayer(ctx, bytes.NewReader(lower)); err != nil {
			t.Fatal(err)
		}
		x.ApplyLayer(ctx, bytes.NewReader(data))
		x.Close()
		s.checkOutside(t)
		filepath.Walk(s.root, func(p string, fi os.FileInfo, err error) error {
			if err == nil && len(fi.Name()) >= 4 && fi.Name()[:4] == whiteoutPrefix {
				t.Errorf("whiteout marker %s left in the tree", p)
			}
			return nil
		})
	})
}

// TestApplyLayerWhiteouts covers the whiteout rules on a plain directory
// tree (the ext4 side is in oci_test.go).
func TestApplyLayerWhiteouts(t *testing.T) {
	s := newSandbox(t)
	ctx := context.Background()
	x, err := NewExtractor(s.root, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	layers := [][]ent{
		{dirEnt("d/", 0o755), reg("d/a", "a"), reg("d/b", "b"), dirEnt("d/sub/", 0o755), reg("d/sub/c", "c"), reg("keep", "k"), dirEnt("gone/", 0o755), reg("gone/x", "x")},
		{reg("d/new", "n"), whiteoutEnt("d/.wh..wh..opq"), whiteoutEnt(".wh.gone"), reg("gone", "a file now"), whiteoutEnt(".wh.missing"), whiteoutEnt("nodir/.wh.x")},
	}
	for _, l := range layers {
		if err := x.ApplyLayer(ctx, bytes.NewReader(tarOf(t, l...))); err != nil {
			t.Fatal(err)
		}
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	if x.Stats().Whiteouts != 4 {
		t.Errorf("whiteouts counted %d, want 4", x.Stats().Whiteouts)
	}
	var got []string
	filepath.Walk(s.root, func(p string, fi os.FileInfo, err error) error {
		if err == nil && p != s.root {
			rel, _ := filepath.Rel(s.root, p)
			got = append(got, rel)
		}
		return nil
	})
	want := "d d/new gone keep" // no "nodir": a whiteout in a missing directory makes nothing
	if g := join(got); g != want {
		t.Fatalf("tree holds %q, want %q", g, want)
	}
	if b, _ := os.ReadFile(filepath.Join(s.root, "gone")); string(b) != "a file now" {
		t.Errorf("gone = %q", b)
	}
	// A plain Apply (a rootfs tarball, not a layer) keeps .wh. files as
	// ordinary files.
	if _, err := Extract(ctx, bytes.NewReader(tarOf(t, ent{Header: tar.Header{Typeflag: tar.TypeReg, Name: ".wh.plain", Mode: 0o644}})), s.root, Limits{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.root, ".wh.plain")); err != nil {
		t.Errorf("plain archive: %v", err)
	}
}

func join(s []string) string {
	var b bytes.Buffer
	for i, x := range s {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(x)
	}
	return b.String()
}
