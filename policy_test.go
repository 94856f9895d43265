// Policy tests: rules of kiln's code base that a reviewer should not have
// to enforce by hand (STYLE.md): every package explains itself, no package
// registers itself from init(), internal/daemon is imported only by the
// CLI, and the guest agent stays free of the daemon's dependencies.
package kiln_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

type pkgFiles struct {
	dir   string
	files map[string]*ast.File
}

func parsePackages(t *testing.T) []pkgFiles {
	t.Helper()
	byDir := map[string]*pkgFiles{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != "." || d.Name() == "testdata" || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		dir := filepath.Dir(path)
		if byDir[dir] == nil {
			byDir[dir] = &pkgFiles{dir: dir, files: map[string]*ast.File{}}
		}
		byDir[dir].files[path] = f
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []pkgFiles
	for _, p := range byDir {
		out = append(out, *p)
	}
	return out
}

func TestEveryPackageHasOneComment(t *testing.T) {
	for _, p := range parsePackages(t) {
		n := 0
		for _, f := range p.files {
			if f.Doc != nil && strings.TrimSpace(f.Doc.Text()) != "" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("package %s: %d files carry a package comment, want exactly 1", p.dir, n)
		}
	}
}

func TestNoInitFunctions(t *testing.T) {
	for _, p := range parsePackages(t) {
		for name, f := range p.files {
			for _, d := range f.Decls {
				if fn, ok := d.(*ast.FuncDecl); ok && fn.Recv == nil && fn.Name.Name == "init" {
					t.Errorf("%s: func init: register dependencies explicitly in daemon.Open instead", name)
				}
			}
		}
	}
}

func TestDaemonImportedOnlyByCLI(t *testing.T) {
	for _, p := range parsePackages(t) {
		for name, f := range p.files {
			for _, imp := range f.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				if path == "github.com/kilnvm/kiln/internal/daemon" && !strings.HasPrefix(p.dir, "internal/cli") {
					t.Errorf("%s imports internal/daemon; only internal/cli may", name)
				}
			}
		}
	}
}

func TestAgentStaysSmall(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "./cmd/kiln-agent").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"internal/daemon", "internal/store", "modernc.org/sqlite", "github.com/spf13/cobra", "internal/cli"} {
		for _, dep := range strings.Fields(string(out)) {
			if strings.Contains(dep, bad) {
				t.Errorf("kiln-agent depends on %s (via %s): the guest binary must stay free of it", bad, dep)
			}
		}
	}
}
