package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kilnvm/kiln/internal/cli"
	"github.com/kilnvm/kiln/internal/docgen"
)

// TestDocsUpToDate regenerates the reference documents in memory and fails
// when the committed files under docs/ differ: the CLI, the routes or the
// error classes changed without `make docs`.
func TestDocsUpToDate(t *testing.T) {
	docs := cli.Reference()
	if len(docs) == 0 {
		t.Fatal("cli.Reference returned no documents")
	}
	for name, want := range docs {
		path := filepath.Join("..", "..", "..", "docs", name)
		got, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("docs/%s: %v: run `make docs` and commit the result", name, err)
			continue
		}
		if d := docgen.Diff(got, want); d != "" {
			t.Errorf("docs/%s is out of date (%s): run `make docs` and commit the result", name, d)
		}
	}
}

func TestWriteWritesEveryDocument(t *testing.T) {
	dir := t.TempDir()
	docs := map[string][]byte{"a.md": []byte("A\n"), "b.md": []byte("B\n")}
	written, err := write(dir, docs)
	if err != nil || len(written) != 2 {
		t.Fatalf("write = %v, %v; want two paths", written, err)
	}
	for name, want := range docs {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != string(want) {
			t.Errorf("%s: got %q, %v; want %q", name, got, err, want)
		}
	}
	if _, err := write(filepath.Join(dir, "missing"), docs); err == nil {
		t.Error("write into a missing directory succeeded")
	}
}
