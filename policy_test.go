// Policy tests: rules of kiln's code base that a reviewer should not have
// to enforce by hand (STYLE.md): every package explains itself, no package
// registers itself from init() or keeps mutable package-level state,
// internal/daemon is imported only by the CLI, and the guest agent stays
// free of the daemon's dependencies.
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

// immutableVarExceptions are package-level variables under internal/ that
// the rule below cannot recognise as immutable, each with why it stays.
var immutableVarExceptions = map[string]string{
	// -ldflags -X can only stamp a variable; no code assigns it.
	"internal/daemon.Version": "stamped at link time by the Makefile's -ldflags -X",
	// The ordered schema migrations, read by migrate and by the migration
	// tests (which index it); no code appends to or writes it.
	"internal/store.migrations": "ordered migration table, read only",
}

// TestNoMutablePackageVars rejects package-level variables in internal/
// (STYLE.md §7.1: no global registries, no swappable package vars). The
// immutable kinds are allowed: sentinel errors (Err… = errors.New,
// fmt.Errorf or &T{…}), compiled regexps, `var _ I = …` assertions and
// //go:embed strings or embed.FS. Anything else becomes a const, a function
// returning a fresh value, or a field of the struct that uses it.
func TestNoMutablePackageVars(t *testing.T) {
	seen := map[string]bool{}
	for _, p := range parsePackages(t) {
		dir := filepath.ToSlash(p.dir)
		if !strings.HasPrefix(dir, "internal/") {
			continue
		}
		for name, f := range p.files {
			for _, d := range f.Decls {
				g, ok := d.(*ast.GenDecl)
				if !ok || g.Tok != token.VAR {
					continue
				}
				for _, s := range g.Specs {
					vs := s.(*ast.ValueSpec)
					for i, id := range vs.Names {
						if _, ok := immutableVarExceptions[dir+"."+id.Name]; ok {
							seen[dir+"."+id.Name] = true
							continue
						}
						if immutableVar(g, vs, i) {
							continue
						}
						t.Errorf("%s: package-level var %s: make it a const, a function or a struct field (or, if it is immutable, add it to immutableVarExceptions with why)", name, id.Name)
					}
				}
			}
		}
	}
	for v := range immutableVarExceptions {
		if !seen[v] {
			t.Errorf("immutableVarExceptions names %s, which no longer exists: remove the entry", v)
		}
	}
}

// immutableVar reports whether the i-th name of vs is one of the
// immutable kinds TestNoMutablePackageVars allows.
func immutableVar(g *ast.GenDecl, vs *ast.ValueSpec, i int) bool {
	name := vs.Names[i].Name
	if name == "_" {
		return true // interface assertion
	}
	for _, c := range []*ast.CommentGroup{g.Doc, vs.Doc} {
		if c == nil {
			continue
		}
		for _, l := range c.List {
			if strings.HasPrefix(l.Text, "//go:embed ") {
				if id, ok := vs.Type.(*ast.Ident); ok && id.Name == "string" {
					return true
				}
				if sel, ok := vs.Type.(*ast.SelectorExpr); ok && sel.Sel.Name == "FS" {
					return true
				}
				return false // []byte can be written to: embed a string
			}
		}
	}
	if i >= len(vs.Values) {
		return false
	}
	v := vs.Values[i]
	if call, ok := v.(*ast.CallExpr); ok {
		if sel, ok := call.Fun.(*ast.SelectorExpr); ok {
			if pkg, ok := sel.X.(*ast.Ident); ok {
				switch pkg.Name + "." + sel.Sel.Name {
				case "regexp.MustCompile":
					return true
				case "errors.New", "fmt.Errorf":
					return strings.HasPrefix(name, "Err") || strings.HasPrefix(name, "err")
				}
			}
		}
	}
	if u, ok := v.(*ast.UnaryExpr); ok && u.Op == token.AND {
		if _, ok := u.X.(*ast.CompositeLit); ok {
			return strings.HasPrefix(name, "Err") || strings.HasPrefix(name, "err")
		}
	}
	return false
}
