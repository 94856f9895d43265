package kernel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
)

// DefaultModules is the root module set a kiln guest needs: the virtio
// transport QEMU microvm and Firecracker use (virtio-mmio, found through
// ACPI), the block, network and console (virtio-serial) drivers, ext4 for
// the root filesystem and the vsock transport for the agent channel.
// Their dependencies, and the softdeps ext4 and jbd2 need at run time
// (crc32c), are added by resolution.
func DefaultModules() []string {
	return []string{"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "ext4", "vmw_vsock_virtio_transport"}
}

// Module is one module chosen for the initramfs.
type Module struct {
	Name string // normalised module name
	// File is the module file relative to the modules directory, as found
	// (possibly compressed: kernel/fs/ext4/ext4.ko.xz).
	File string
	Info Modinfo
}

// moduleSet is what resolution needs to know about a kernel's modules. The
// directory-backed implementation is modIndex; tests use in-memory graphs.
type moduleSet interface {
	// info returns the metadata of the module file called name
	// (normalised); ok is false when there is no such file.
	info(name string) (mi Modinfo, ok bool, err error)
	// builtin reports whether name is compiled into the kernel.
	builtin(name string) bool
	// providers returns the modules whose aliases match name, and whether a
	// built-in module matches it.
	providers(name string) (mods []string, builtin bool, err error)
	// describe names the set in error messages ("/lib/modules/6.1.0-9").
	describe() string
}

// errNoModule marks a required module that is neither a module file nor
// built in: the kernel cannot serve a kiln guest.
var errNoModule = errors.New("module missing")

// resolve computes the modules to load, dependencies first, starting from
// roots. Required names (roots and depends=) must exist as module files,
// aliases of module files, or built-ins; softdeps are best effort, as for
// modprobe. An alias with several providers resolves to the *_generic one
// when there is one (it works on every CPU), else the first by name.
// The order is a deterministic topological sort: roots in the order given,
// each node's prerequisites visited sorted by name.
func resolve(ctx context.Context, set moduleSet, roots []string) ([]string, map[string]Modinfo, error) {
	type node struct {
		info     Modinfo
		requires []string // modules that must load before this one
	}
	nodes := map[string]*node{}
	var order []string // discovery order, for visiting post-softdeps
	// need records why a module was pulled in, for error messages.
	need := map[string]string{}

	// lookup maps a requested name to a module to load ("" when built in or
	// an optional softdep that cannot be met).
	lookup := func(name, by string, required bool) (string, error) {
		n := NormalizeName(name)
		if _, ok := nodes[n]; ok {
			return n, nil
		}
		if _, ok, err := set.info(n); err != nil {
			return "", err
		} else if ok {
			return n, nil
		}
		if set.builtin(n) {
			return "", nil
		}
		mods, builtin, err := set.providers(name)
		if err != nil {
			return "", err
		}
		if builtin {
			return "", nil
		}
		if len(mods) > 0 {
			return pickProvider(mods), nil
		}
		if !required {
			return "", nil
		}
		why := ""
		if by != "" {
			why = " (needed by " + by + ")"
		}
		return "", fmt.Errorf("module %q%s is neither a module under %s nor built into the kernel: %w: %w",
			name, why, set.describe(), errNoModule, api.ErrBadRequest)
	}

	var add func(name, by string) error
	add = func(name, by string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, ok := nodes[name]; ok {
			return nil
		}
		mi, ok, err := set.info(name)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("module %q vanished from %s", name, set.describe())
		}
		nd := &node{info: mi}
		nodes[name] = nd
		order = append(order, name)
		need[name] = by
		var deps []string
		for _, d := range mi.Depends {
			m, err := lookup(d, name, true)
			if err != nil {
				return err
			}
			if m != "" {
				deps = append(deps, m)
			}
		}
		for _, d := range mi.SoftPre {
			m, err := lookup(d, name, false)
			if err != nil {
				return err
			}
			if m != "" && m != name {
				deps = append(deps, m)
			}
		}
		nd.requires = deps
		for _, d := range deps {
			if err := add(d, name); err != nil {
				return err
			}
		}
		for _, d := range mi.SoftPost {
			m, err := lookup(d, name, false)
			if err != nil {
				return err
			}
			if m == "" || m == name {
				continue
			}
			if err := add(m, name); err != nil {
				return err
			}
			// A post-softdep loads after the module naming it.
			nodes[m].requires = append(nodes[m].requires, name)
		}
		return nil
	}

	var rootMods []string
	for _, r := range roots {
		m, err := lookup(r, "", true)
		if err != nil {
			return nil, nil, err
		}
		if m == "" {
			continue // built in
		}
		if err := add(m, ""); err != nil {
			return nil, nil, err
		}
		rootMods = append(rootMods, m)
	}

	// Depth-first post-order: prerequisites first. state: 1 visiting, 2 done.
	state := map[string]int{}
	var sorted []string
	var stack []string
	var visit func(n string) error
	visit = func(n string) error {
		switch state[n] {
		case 2:
			return nil
		case 1:
			i := len(stack) - 1
			for i > 0 && stack[i] != n {
				i--
			}
			cycle := append(append([]string{}, stack[i:]...), n)
			return fmt.Errorf("module dependency cycle in %s: %s: %w", set.describe(), strings.Join(cycle, " -> "), api.ErrBadRequest)
		}
		state[n] = 1
		stack = append(stack, n)
		reqs := append([]string(nil), nodes[n].requires...)
		sort.Strings(reqs)
		for _, r := range reqs {
			if err := visit(r); err != nil {
				return err
			}
		}
		stack = stack[:len(stack)-1]
		state[n] = 2
		sorted = append(sorted, n)
		return nil
	}
	for _, r := range rootMods {
		if err := visit(r); err != nil {
			return nil, nil, err
		}
	}
	rest := append([]string(nil), order...)
	sort.Strings(rest)
	for _, n := range rest {
		if err := visit(n); err != nil {
			return nil, nil, err
		}
	}
	infos := make(map[string]Modinfo, len(nodes))
	for n, nd := range nodes {
		infos[n] = nd.info
	}
	return sorted, infos, nil
}

// pickProvider chooses among modules providing one alias.
func pickProvider(mods []string) string {
	s := append([]string(nil), mods...)
	sort.Strings(s)
	for _, m := range s {
		if strings.HasSuffix(m, "_generic") {
			return m
		}
	}
	return s[0]
}

// modIndex is a moduleSet over a lib/modules/<release> directory.
type modIndex struct {
	dir   string
	files map[string]string // module name → path relative to dir
	// builtins and builtinAliases come from modules.builtin and
	// modules.builtin.modinfo (both shipped by the kernel build).
	builtins       map[string]bool
	builtinAliases []aliasEntry
	// aliases is loaded on first need: from modules.alias when depmod has
	// run, else by reading every module's .modinfo.
	aliases []aliasEntry
	loaded  bool
	infos   map[string]Modinfo
}

type aliasEntry struct{ pattern, module string }

// openIndex lists the module files under dir. A missing modules.builtin
// is allowed (the kernel then seems to have no built-in modules).
func openIndex(ctx context.Context, dir string) (*modIndex, error) {
	x := &modIndex{dir: dir, files: map[string]string{}, builtins: map[string]bool{}, infos: map[string]Modinfo{}}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() {
			// build/ and source/ point into kernel headers, not modules.
			if p != dir && (d.Name() == "build" || d.Name() == "source") {
				return filepath.SkipDir
			}
			return nil
		}
		name := moduleFileName(d.Name())
		if name == "" || !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		// depmod's rule for duplicates: updates/ overrides the rest; else
		// keep the first by path so the choice is deterministic (WalkDir
		// walks in lexical order).
		if old, ok := x.files[name]; !ok || (strings.HasPrefix(rel, "updates/") && !strings.HasPrefix(old, "updates/")) {
			x.files[name] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list modules in %s: %w", dir, err)
	}
	if err := x.readBuiltins(); err != nil {
		return nil, err
	}
	return x, nil
}

func (x *modIndex) readBuiltins() error {
	f, err := os.Open(filepath.Join(x.dir, "modules.builtin"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if n := moduleFileName(path.Base(strings.TrimSpace(sc.Text()))); n != "" {
			x.builtins[n] = true
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", f.Name(), err)
	}
	data, err := os.ReadFile(filepath.Join(x.dir, "modules.builtin.modinfo"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	// Lines are "module.key=value", NUL-separated.
	for _, kv := range strings.Split(string(data), "\x00") {
		mk, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		mod, key, ok := strings.Cut(mk, ".")
		if ok && key == "alias" {
			x.builtinAliases = append(x.builtinAliases, aliasEntry{v, NormalizeName(mod)})
		}
	}
	return nil
}

func (x *modIndex) describe() string { return x.dir }

func (x *modIndex) builtin(name string) bool { return x.builtins[name] }

func (x *modIndex) info(name string) (Modinfo, bool, error) {
	if mi, ok := x.infos[name]; ok {
		return mi, true, nil
	}
	rel, ok := x.files[name]
	if !ok {
		return Modinfo{}, false, nil
	}
	mi, err := readModinfoFile(filepath.Join(x.dir, rel))
	if err != nil {
		return Modinfo{}, false, err
	}
	if mi.Name == "" {
		mi.Name = name
	}
	x.infos[name] = mi
	return mi, true, nil
}

func (x *modIndex) providers(name string) ([]string, bool, error) {
	for _, a := range x.builtinAliases {
		if aliasMatch(a.pattern, name) {
			return nil, true, nil
		}
	}
	if err := x.loadAliases(); err != nil {
		return nil, false, err
	}
	var mods []string
	seen := map[string]bool{}
	for _, a := range x.aliases {
		if !seen[a.module] && aliasMatch(a.pattern, name) {
			if _, ok := x.files[a.module]; ok {
				seen[a.module] = true
				mods = append(mods, a.module)
			}
		}
	}
	return mods, false, nil
}

func (x *modIndex) loadAliases() error {
	if x.loaded {
		return nil
	}
	if data, err := os.ReadFile(filepath.Join(x.dir, "modules.alias")); err == nil {
		// depmod's output: "alias PATTERN MODULE" lines.
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) == 3 && f[0] == "alias" {
				x.aliases = append(x.aliases, aliasEntry{f[1], NormalizeName(f[2])})
			}
		}
	} else {
		// No depmod output (a package's files, not an installed system):
		// read every module's aliases. Sorted, so the result is stable.
		names := make([]string, 0, len(x.files))
		for n := range x.files {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			mi, _, err := x.info(n)
			if err != nil {
				return err
			}
			for _, a := range mi.Aliases {
				x.aliases = append(x.aliases, aliasEntry{a, n})
			}
		}
	}
	x.loaded = true
	return nil
}

// aliasMatch reports whether an alias pattern (a glob, as in modprobe)
// matches name, with '-' and '_' treated alike.
func aliasMatch(pattern, name string) bool {
	p, n := normalizeAlias(pattern), NormalizeName(name)
	if p == n {
		return true
	}
	if !strings.ContainsAny(p, "*?[") {
		return false
	}
	ok, err := path.Match(p, n)
	return err == nil && ok
}

// ResolveModules lists the modules of the kernel whose modules directory
// (lib/modules/<release>) is dir needed to load roots, in load order
// (dependencies first). roots nil means DefaultModules. Built-in modules
// are left out.
func ResolveModules(ctx context.Context, dir string, roots []string) ([]Module, error) {
	if roots == nil {
		roots = DefaultModules()
	}
	x, err := openIndex(ctx, dir)
	if err != nil {
		return nil, err
	}
	names, infos, err := resolve(ctx, x, roots)
	if err != nil {
		return nil, err
	}
	mods := make([]Module, len(names))
	for i, n := range names {
		mods[i] = Module{Name: n, File: x.files[n], Info: infos[n]}
	}
	return mods, nil
}
