package e2e

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// benchDocTitle opens docs/performance.md.
const benchDocTitle = "# Performance\n"

// writeBenchSection replaces, in the Markdown file at path, the section
// between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` with body, or
// appends it when absent, leaving every other section as it was: each
// benchmark of `make bench` owns one section, and running one of them
// alone refreshes only its own figures.
func writeBenchSection(path, name, body string) error {
	begin, end := "<!-- bench:"+name+" -->\n", "<!-- /bench:"+name+" -->\n"
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	doc := string(old)
	if !strings.HasPrefix(doc, benchDocTitle) {
		doc = benchDocTitle + "\n" + doc
	}
	section := begin + strings.TrimRight(body, "\n") + "\n" + end
	if i := strings.Index(doc, begin); i >= 0 {
		if j := strings.Index(doc[i:], end); j >= 0 {
			doc = doc[:i] + section + doc[i+j+len(end):]
		} else {
			doc = doc[:i] + section // an unterminated section runs to the end
		}
	} else {
		doc = strings.TrimRight(doc, "\n") + "\n\n" + section
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(doc), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func TestBenchSectionKeepsOtherSections(t *testing.T) {
	p := filepath.Join(t.TempDir(), "performance.md")
	for _, s := range []struct{ name, body string }{{"a", "A1"}, {"b", "B1\n"}, {"a", "A2\nmore"}} {
		if err := writeBenchSection(p, s.name, s.body); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	want := "# Performance\n\n<!-- bench:a -->\nA2\nmore\n<!-- /bench:a -->\n\n<!-- bench:b -->\nB1\n<!-- /bench:b -->\n"
	if string(got) != want {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
}
