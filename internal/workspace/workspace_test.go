package workspace

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/guest"
	"github.com/kilnvm/kiln/internal/system"
	"github.com/kilnvm/kiln/internal/testutil"
)

// hostShellGuest stands in for a VM: it runs the guest scripts with the
// host's /bin/sh and git (the e2e tests run them in real VMs). The scripts
// only ever touch the workspace directory they are given.
type hostShellGuest struct{ t *testing.T }

func (g hostShellGuest) Exec(ctx context.Context, req guest.ExecRequest) (int, error) {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", req.Command)
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_SYSTEM=/dev/null")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = req.Stdin, req.Stdout, req.Stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	return 0, err
}

// worktreeID is the tree id of a work tree as `git add -A` sees it
// (content, executable bits, symlinks; ignored files left out), computed
// with a temporary index.
func worktreeID(t *testing.T, dir string) string {
	t.Helper()
	idx := filepath.Join(t.TempDir(), "index")
	return testutil.GitSh(t, dir, "export GIT_INDEX_FILE="+idx+"\n[ -f .git/index ] && cp .git/index $GIT_INDEX_FILE\ngit add -A\ngit write-tree")
}

// newRepo makes a host repository with every kind of file, uncommitted
// changes, an untracked and an ignored file.
func newRepo(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	testutil.GitSh(t, filepath.Dir(dir), `git init -q -b main repo
cd repo
git config user.name 'Ada Host'
git config user.email ada@example.org
mkdir -p src/deep docs
printf 'hello\n' > src/hello.txt
printf 'keep\n' > src/deep/keep.txt
printf 'gone\n' > docs/gone.txt
printf 'old\n' > docs/old-name.txt
printf '#!/bin/sh\necho run\n' > run.sh; chmod +x run.sh
head -c 3000 /dev/urandom > blob.bin
ln -s src/hello.txt link
printf '*.log\nbuild/\n' > .gitignore
git add -A
git commit -qm initial
printf 'uncommitted\n' >> src/hello.txt
rm docs/gone.txt
printf 'new\n' > untracked.txt
printf 'noise\n' > debug.log
mkdir build; printf 'x\n' > build/out.o`)
	return dir
}

func TestPrepareAndExportRoundTrip(t *testing.T) {
	ctx := context.Background()
	r := system.ExecRunner{}
	host := newRepo(t)
	repo, err := Inspect(ctx, r, filepath.Join(host, "src"))
	if err != nil {
		t.Fatal(err)
	}
	if repo.Root != host || repo.Branch != "main" || repo.UserName != "Ada Host" || !ValidCommit(repo.Head) {
		t.Fatalf("inspect: %+v", repo)
	}
	files, err := ListChanges(ctx, r, repo.Root, repo.Head, true)
	if err != nil {
		t.Fatal(err)
	}
	g := hostShellGuest{t}
	gdir := filepath.Join(t.TempDir(), "guest", "repo")
	p, err := Prepare(ctx, g, repo, files, PrepareOptions{GuestPath: gdir, IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	if p.Copy.Missing != 1 || p.Branch != "main" || p.Head != repo.Head {
		t.Fatalf("prepared: %+v", p)
	}
	// The guest's tree is the host's, as on disk; ignored files stayed home.
	if a, b := worktreeID(t, gdir), worktreeID(t, host); a != b {
		t.Fatalf("guest tree %s != host tree %s", a, b)
	}
	for _, f := range []string{"debug.log", "build/out.o", "docs/gone.txt"} {
		if _, err := os.Lstat(filepath.Join(gdir, f)); err == nil {
			t.Errorf("%s was copied into the guest", f)
		}
	}
	if fi, err := os.Lstat(filepath.Join(gdir, "run.sh")); err != nil || fi.Mode()&0o100 == 0 {
		t.Errorf("run.sh lost its executable bit: %v %v", fi, err)
	}
	if l, err := os.Readlink(filepath.Join(gdir, "link")); err != nil || l != "src/hello.txt" {
		t.Errorf("link: %q %v", l, err)
	}
	// Shallow history at the host's HEAD, the host's identity, and a
	// guest index that matches HEAD (the host's changes show as unstaged).
	if got := testutil.GitSh(t, gdir, "git rev-parse HEAD; git config user.email; cat .git/shallow; git diff --cached --name-only | wc -l"); got != repo.Head+"\nada@example.org\n"+repo.Head+"\n0" {
		t.Fatalf("guest repo: %q", got)
	}

	// Work in the guest: a commit, then uncommitted edits of every kind.
	testutil.GitSh(t, gdir, `git mv docs/old-name.txt docs/new-name.txt
printf 'committed in the guest\n' > src/deep/keep.txt
git commit -qam 'guest work'
head -c 2000 /dev/urandom >> blob.bin
chmod +x src/hello.txt
rm run.sh
ln -sf ../run.sh src/deep/link2
printf 'fresh\n' > fresh.txt
printf 'ignored\n' > more.log`)
	indexBefore := testutil.GitSh(t, gdir, "sha256sum .git/index")

	var patch bytes.Buffer
	changes, err := Patch(ctx, g, gdir, "", &patch)
	if err != nil {
		t.Fatal(err)
	}
	if testutil.GitSh(t, gdir, "sha256sum .git/index") != indexBefore {
		t.Fatal("export changed the guest's index")
	}
	got := map[string]string{}
	for _, c := range changes {
		got[c.Path] = c.Status
	}
	want := map[string]string{"docs/new-name.txt": "A", "docs/old-name.txt": "D", "blob.bin": "M", "run.sh": "D",
		"fresh.txt": "A", "src/deep/keep.txt": "M", "src/hello.txt": "M", "src/deep/link2": "A"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("changed files %v, want %v", got, want)
	}
	if !bytes.HasPrefix(patch.Bytes(), []byte("diff --git ")) {
		t.Errorf("the patch does not start with a diff: %.80q", patch.Bytes())
	}
	pf := filepath.Join(t.TempDir(), "p.patch")
	if err := os.WriteFile(pf, patch.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CheckApplies(ctx, r, host, pf); err != nil {
		t.Fatal(err)
	}
	testutil.GitSh(t, host, "git apply "+pf)
	if a, b := worktreeID(t, gdir), worktreeID(t, host); a != b {
		t.Fatalf("after git apply: host tree %s != guest tree %s", b, a)
	}
	// Applied once, the patch no longer applies: a conflict, said so.
	if err := CheckApplies(ctx, r, host, pf); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("re-applying: got %v, want conflict", err)
	}

	// The guest's commits come back as a host branch.
	var bundle bytes.Buffer
	if err := Bundle(ctx, g, gdir, repo.Head, &bundle); err != nil {
		t.Fatal(err)
	}
	bf := filepath.Join(t.TempDir(), "b.bundle")
	os.WriteFile(bf, bundle.Bytes(), 0o644)
	commits, err := FetchBundle(ctx, r, host, bf, "from-guest")
	if err != nil {
		t.Fatal(err)
	}
	if len(commits) != 1 || !strings.Contains(commits[0], "guest work") {
		t.Fatalf("fetched commits: %q", commits)
	}
	if got := testutil.GitSh(t, host, "git rev-parse from-guest^"); got != repo.Head {
		t.Fatalf("branch parent %s, want %s", got, repo.Head)
	}
	if _, err := FetchBundle(ctx, r, host, bf, "from-guest"); !errors.Is(err, api.ErrAlreadyExists) {
		t.Fatalf("fetch into an existing branch: %v", err)
	}
}

func TestPrepareFailures(t *testing.T) {
	ctx := context.Background()
	r := system.ExecRunner{}
	g := hostShellGuest{t}
	if _, err := Inspect(ctx, r, t.TempDir()); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("not a repository: %v", err)
	}
	empty := t.TempDir()
	testutil.GitSh(t, empty, "git init -q")
	if _, err := Inspect(ctx, r, empty); !errors.Is(err, api.ErrFailedPrecondition) {
		t.Fatalf("no commit: %v", err)
	}
	host := newRepo(t)
	repo, err := Inspect(ctx, r, host)
	if err != nil {
		t.Fatal(err)
	}
	// A non-empty target is refused and left as it was.
	busy := filepath.Join(t.TempDir(), "busy")
	os.MkdirAll(busy, 0o755)
	os.WriteFile(filepath.Join(busy, "mine"), []byte("x"), 0o644)
	if _, err := Prepare(ctx, g, repo, Changes{}, PrepareOptions{GuestPath: busy}); !errors.Is(err, api.ErrFailedPrecondition) {
		t.Fatalf("non-empty target: %v", err)
	}
	if ents, _ := os.ReadDir(busy); len(ents) != 1 {
		t.Fatalf("the refused target was changed: %v", ents)
	}
	if _, err := Prepare(ctx, g, repo, Changes{}, PrepareOptions{GuestPath: "rel/path"}); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("relative guest path: %v", err)
	}
	// Submodules are refused unless the whole directory is copied.
	sub := repo
	sub.Submodules = []string{"vendor/lib"}
	if _, err := Prepare(ctx, g, sub, Changes{}, PrepareOptions{GuestPath: filepath.Join(t.TempDir(), "x")}); !errors.Is(err, api.ErrFailedPrecondition) || !strings.Contains(err.Error(), "vendor/lib") {
		t.Fatalf("submodules: %v", err)
	}
	full := filepath.Join(t.TempDir(), "full")
	if _, err := Prepare(ctx, g, sub, Changes{}, PrepareOptions{GuestPath: full, FullCopy: true}); err != nil {
		t.Fatalf("full copy: %v", err)
	}
	if _, err := os.Stat(filepath.Join(full, "debug.log")); err != nil {
		t.Fatalf("full copy left out an ignored file: %v", err)
	}
	// Export without a workspace, with a bad base, and with no commits.
	if _, err := Patch(ctx, g, filepath.Join(t.TempDir(), "none"), "", io.Discard); !errors.Is(err, api.ErrFailedPrecondition) {
		t.Fatalf("export of no workspace: %v", err)
	}
	if _, err := Patch(ctx, g, full, "0000000000000000000000000000000000000000", io.Discard); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("unknown base: %v", err)
	}
	if err := Bundle(ctx, g, full, repo.Head, io.Discard); !errors.Is(err, api.ErrFailedPrecondition) {
		t.Fatalf("bundle with no new commit: %v", err)
	}
}

func TestPrepareFrom(t *testing.T) {
	ctx := context.Background()
	r := system.ExecRunner{}
	host := newRepo(t)
	first := testutil.GitSh(t, host, "git rev-parse HEAD")
	testutil.GitSh(t, host, "git add -A && git commit -qm second")
	repo, err := Inspect(ctx, r, host)
	if err != nil {
		t.Fatal(err)
	}
	gdir := filepath.Join(t.TempDir(), "w")
	p, err := Prepare(ctx, hostShellGuest{t}, repo, Changes{}, PrepareOptions{GuestPath: gdir, Branch: "topic", From: first})
	if err != nil {
		t.Fatal(err)
	}
	if p.Head != first || p.Branch != "topic" {
		t.Fatalf("prepared %+v", p)
	}
	if got := testutil.GitSh(t, gdir, "git symbolic-ref --short HEAD; git rev-parse HEAD; git status --porcelain | wc -l; cat docs/gone.txt"); got != "topic\n"+first+"\n0\ngone" {
		t.Fatalf("guest at --from: %q", got)
	}
}
