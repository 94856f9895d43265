package daemon

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/lockorder"
)

// lockSection returns ARCHITECTURE.md's "## Lock ordering" section.
func lockSection(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("ARCHITECTURE.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "\n## Lock ordering\n")
	if !ok {
		t.Fatal(`ARCHITECTURE.md has no "## Lock ordering" section`)
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	return sec
}

// TestLockOrderMatchesArchitectureDoc keeps the documented order and the
// checked one identical: the arrow line lists the non-leaf levels, and
// "Leaves of this package:" lists exactly the code's last level.
func TestLockOrderMatchesArchitectureDoc(t *testing.T) {
	sec := lockSection(t)
	levels := daemonLockOrder(false).Levels()
	leaves := levels[len(levels)-1]

	// The order line: the code's order with its last level written "leaves".
	m := regexp.MustCompile("(?s)```\n(.*?)\n```").FindStringSubmatch(sec)
	if m == nil {
		t.Fatal("lock section has no ``` block with the order")
	}
	want := lockorder.New(false, append(levels[:len(levels)-1:len(levels)-1], lockorder.Level{"leaves"})...).String()
	if got := strings.TrimSpace(m[1]); got != want {
		t.Errorf("ARCHITECTURE.md order line is %q; the code (daemonLockOrder) says %q", got, want)
	}

	// The leaves of this package, as a sentence of `names`.
	m = regexp.MustCompile(`(?s)Leaves of this package:(.*?)\.\s`).FindStringSubmatch(sec)
	if m == nil {
		t.Fatal(`lock section lacks "Leaves of this package: ...".`)
	}
	var docLeaves []string
	for _, n := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(m[1], -1) {
		docLeaves = append(docLeaves, n[1])
	}
	for _, n := range leaves {
		if !slices.Contains(docLeaves, n) {
			t.Errorf("leaf %s is in daemonLockOrder but not in ARCHITECTURE.md's leaves of this package %v", n, docLeaves)
		}
	}
	for _, n := range docLeaves {
		if !slices.Contains(leaves, n) {
			t.Errorf("ARCHITECTURE.md lists %s as a leaf of this package; daemonLockOrder does not (%v)", n, leaves)
		}
	}
}

// TestNoUnorderedMutexFields fails when a struct of this package gains a
// sync.Mutex or sync.RWMutex field: the daemon's locks are lockorder.Mutex,
// named in daemonLockOrder and ARCHITECTURE.md.
func TestNoUnorderedMutexFields(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			st, ok := n.(*ast.StructType)
			if !ok {
				return true
			}
			for _, fld := range st.Fields.List {
				sel, ok := fld.Type.(*ast.SelectorExpr)
				if !ok {
					continue
				}
				if x, ok := sel.X.(*ast.Ident); ok && x.Name == "sync" && (sel.Sel.Name == "Mutex" || sel.Sel.Name == "RWMutex") {
					t.Errorf("%s: a sync.%s field; use lockorder.Mutex, add it to daemonLockOrder and ARCHITECTURE.md's lock ordering",
						fset.Position(fld.Pos()), sel.Sel.Name)
				}
			}
			return true
		})
	}
}

// TestDaemonLocksAreNamedAndChecked builds the daemon's locks as Open does
// and runs the documented patterns (a VM operation that takes imageOpsMu,
// then the leaves one at a time) and the forbidden ones.
func TestDaemonLocksAreNamedAndChecked(t *testing.T) {
	d := &Daemon{}
	d.initLocks(daemonLockOrder(true))
	vm := d.vmLocks.get("vm1")
	if vm.Name != lockVM || vm.Order != d.lockOrder {
		t.Fatalf("VM lock is %q in %v, want %q in the daemon's order", vm.Name, vm.Order, lockVM)
	}
	for _, m := range []*lockorder.Mutex{vm, &d.createVMMu, &d.imageOpsMu, &d.vmLocks.mu, &d.guests.mu, &d.fwd.mu} {
		if _, ok := d.lockOrder.Rank(m.Name); !ok {
			t.Errorf("lock %q is not in daemonLockOrder", m.Name)
		}
	}

	// Allowed: vmLocks[id] → imageOpsMu → a leaf; leaves one at a time.
	vm.Lock()
	d.imageOpsMu.Lock()
	d.fwd.mu.Lock()
	d.fwd.mu.Unlock()
	d.guests.mu.Lock()
	d.guests.mu.Unlock()
	d.imageOpsMu.Unlock()
	d.vmLocks.forget("vm1") // vmLockSet.mu under a VM lock
	vm.Unlock()

	for name, tc := range map[string]struct{ first, then *lockorder.Mutex }{
		"VM lock under imageOpsMu":   {&d.imageOpsMu, d.vmLocks.get("vm2")},
		"createVMMu with imageOpsMu": {&d.createVMMu, &d.imageOpsMu},
		"two leaves":                 {&d.fwd.mu, &d.guests.mu},
		"imageOpsMu under a leaf":    {&d.guests.mu, &d.imageOpsMu},
		"vmLockSet.mu under a leaf":  {&d.fwd.mu, &d.vmLocks.mu},
		"two VM locks":               {d.vmLocks.get("vm3"), d.vmLocks.get("vm4")},
	} {
		t.Run(name, func(t *testing.T) {
			tc.first.Lock()
			defer tc.first.Unlock()
			defer func() {
				r, _ := recover().(string)
				if !strings.Contains(r, "acquiring "+tc.then.Name) || !strings.Contains(r, "while holding "+tc.first.Name) ||
					!strings.Contains(r, d.lockOrder.String()) {
					t.Fatalf("panic %q: want both lock names and the order", r)
				}
			}()
			tc.then.Lock()
			tc.then.Unlock()
		})
	}
}
