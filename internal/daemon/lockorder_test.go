package daemon

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/daemon/opstate"
	"github.com/kilnvm/kiln/internal/image"
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
// "Leaves of this package:" with "Leaves of other packages:" list exactly
// the code's last level.
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

	// The leaves of this package and of others, each a sentence of `names`.
	var docLeaves []string
	for _, which := range []string{"this package", "other packages"} {
		m = regexp.MustCompile(`(?s)Leaves of ` + which + `:(.*?)\.\s`).FindStringSubmatch(sec)
		if m == nil {
			t.Fatalf(`lock section lacks "Leaves of %s: ...".`, which)
		}
		for _, n := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(m[1], -1) {
			docLeaves = append(docLeaves, n[1])
		}
	}
	for _, n := range leaves {
		if !slices.Contains(docLeaves, n) {
			t.Errorf("leaf %s is in daemonLockOrder but not in ARCHITECTURE.md's leaves %v", n, docLeaves)
		}
	}
	for _, n := range docLeaves {
		if !slices.Contains(leaves, n) {
			t.Errorf("ARCHITECTURE.md lists %s as a leaf; daemonLockOrder does not (%v)", n, leaves)
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

// TestOtherPackagesLocksInDaemonOrder checks the nestings documented for
// other packages' locks against the daemon's order: a pull's shared
// cacheMu, then the pull progress lock, then Op.mu; Registry.mu before
// Op.mu (a real, checked registry's Prune); and their inversions.
func TestOtherPackagesLocksInDaemonOrder(t *testing.T) {
	o := daemonLockOrder(true)
	named := func(n string) *lockorder.Mutex { return &lockorder.Mutex{Name: n, Order: o} }
	cache := &lockorder.RWMutex{Name: image.LockCache, Order: o}
	progress, op, store, reg := named(lockPullProgress), named(opstate.LockOp), named(image.LockStore), named(opstate.LockRegistry)

	// A pull: imageOpsMu is not taken, but a prune under it may take cacheMu.
	cache.RLock()
	progress.Lock()
	op.Lock()
	op.Unlock()
	progress.Unlock()
	store.Lock() // the commit
	store.Unlock()
	cache.RUnlock()
	imageOps := named(lockImageOps)
	imageOps.Lock()
	cache.Lock()
	cache.Unlock()
	imageOps.Unlock()

	// A real registry with the daemon's order: Prune nests Op.mu under Registry.mu.
	r := opstate.NewChecked(time.Now, -time.Second, o)
	done := r.Begin(context.Background(), "test", "x", func(ctx context.Context, op *opstate.Op) (any, error) {
		op.Stage("s", "")
		return nil, nil
	})
	select {
	case <-done.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("operation did not end")
	}
	if n := r.Prune(); n != 1 {
		t.Fatalf("Prune removed %d, want 1", n)
	}

	for name, tc := range map[string]struct {
		first func()
		then  func()
		undo  func()
		want  string
	}{
		"Registry.mu under Op.mu":   {op.Lock, reg.Lock, op.Unlock, "acquiring " + opstate.LockRegistry},
		"progress under Op.mu":      {op.Lock, progress.Lock, op.Unlock, "acquiring " + lockPullProgress},
		"cacheMu under progress":    {progress.Lock, cache.RLock, progress.Unlock, "acquiring " + image.LockCache},
		"two leaves of packages":    {store.Lock, op.Lock, store.Unlock, "both are leaves"},
		"imageOpsMu under cacheMu":  {cache.RLock, imageOps.Lock, cache.RUnlock, "acquiring " + lockImageOps},
		"progress with Registry.mu": {reg.Lock, progress.Lock, reg.Unlock, "peers of one level"},
	} {
		t.Run(name, func(t *testing.T) {
			tc.first()
			defer tc.undo()
			defer func() {
				r, _ := recover().(string)
				if !strings.Contains(r, tc.want) || !strings.Contains(r, o.String()) {
					t.Fatalf("panic %q: want %q and the order", r, tc.want)
				}
			}()
			tc.then()
		})
	}
}
