package kiln_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/paths"
)

// docFileList returns the file names of the bullet list between
// "<!-- files: section -->" and "<!-- end files -->" in a document: the
// first backquoted word of each "- " line.
func docFileList(t *testing.T, doc, section string) []string {
	t.Helper()
	b, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := "<!-- files: " + section + " -->"
	i := strings.Index(text, start)
	if i < 0 {
		t.Fatalf("%s: no %q marker", doc, start)
	}
	body, _, ok := strings.Cut(text[i+len(start):], "<!-- end files -->")
	if !ok {
		t.Fatalf("%s: list %q has no end marker", doc, section)
	}
	name := regexp.MustCompile("^- `([^`]+)`")
	var out []string
	for _, line := range strings.Split(body, "\n") {
		if m := name.FindStringSubmatch(line); m != nil {
			out = append(out, m[1])
		} else if strings.TrimSpace(line) != "" {
			t.Errorf("%s: list %q: line %q is not \"- `name` — what\"", doc, section, line)
		}
	}
	return out
}

// runtimeFileNames returns the string constants of the const block in dir
// whose comment starts "File names inside a VM's runtime directory".
func runtimeFileNames(t *testing.T, dir string) map[string]string {
	t.Helper()
	fset := token.NewFileSet()
	out := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.CONST || g.Doc == nil || !strings.HasPrefix(g.Doc.Text(), "File names inside a VM's runtime directory") {
				continue
			}
			for _, s := range g.Specs {
				vs := s.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						out[n.Name], _ = strconv.Unquote(lit.Value)
					}
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no const block \"File names inside a VM's runtime directory\"", dir)
	}
	return out
}

func sameSet(t *testing.T, what string, doc, code []string) {
	t.Helper()
	for _, n := range code {
		if !slices.Contains(doc, n) {
			t.Errorf("%s: %q is in the code but not in docs/architecture.md", what, n)
		}
	}
	for _, n := range doc {
		if !slices.Contains(code, n) {
			t.Errorf("%s: docs/architecture.md lists %q, which the code does not name", what, n)
		}
	}
}

// TestPerVMFilesDocumented keeps docs/architecture.md's per-VM file lists
// equal to the names in the code: paths.VMFiles for the state directory,
// the runtime-directory constants of each VMM driver for the run directory.
func TestPerVMFilesDocumented(t *testing.T) {
	const doc = "docs/architecture.md"
	sameSet(t, "state directory", docFileList(t, doc, "state"), paths.VMFiles())

	// Used only when a spec names no SerialLog; the daemon always names
	// console.log in the state directory.
	skip := map[string]bool{"ConsoleLogName": true}
	for _, drv := range []string{"qemu", "firecracker"} {
		var code []string
		for name, v := range runtimeFileNames(t, filepath.Join("internal", "vmm", drv)) {
			if !skip[name] {
				code = append(code, v)
			}
		}
		sameSet(t, drv+" runtime directory", docFileList(t, doc, drv), code)
	}
}

// TestPerVMFileConstantsUsed fails on a per-VM file name that no code
// outside internal/paths refers to: a documented file nothing writes.
func TestPerVMFileConstantsUsed(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "internal/paths/paths.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{} // constant → value, of the VMFiles values
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			vs := s.(*ast.ValueSpec)
			for i, n := range vs.Names {
				if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					v, _ := strconv.Unquote(lit.Value)
					if slices.Contains(paths.VMFiles(), v) {
						names[n.Name] = v
					}
				}
			}
		}
	}
	if len(names) != len(paths.VMFiles()) {
		t.Fatalf("internal/paths: %d constants name the %d files of VMFiles", len(names), len(paths.VMFiles()))
	}
	used := map[string]bool{}
	err = filepath.WalkDir("internal", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || path == filepath.Join("internal", "paths")) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok {
				if id, ok := sel.X.(*ast.Ident); ok && id.Name == "paths" {
					used[sel.Sel.Name] = true
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for c, v := range names {
		if !used[c] {
			t.Errorf("paths.%s (%q) is listed in VMFiles but no code uses it: drop it or write the file", c, v)
		}
	}
}
