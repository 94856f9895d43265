package workspace

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"testing"

	"github.com/kilnvm/kiln/internal/system"
	"github.com/kilnvm/kiln/internal/testutil"
)

// A clean repository sends no file: the guest checks all of them out of
// the pack, and the snapshot equals HEAD's tree.
func TestPrepareCleanRepoSendsNoFile(t *testing.T) {
	ctx := context.Background()
	r := system.ExecRunner{}
	host := newRepo(t)
	testutil.GitSh(t, host, "git add -A && git commit -qm all")
	repo, err := Inspect(ctx, r, host)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := ListChanges(ctx, r, repo.Root, repo.Head, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Copy)+len(ch.Remove) != 0 {
		t.Fatalf("changes of a clean repository: %+v", ch)
	}
	gdir := filepath.Join(t.TempDir(), "w")
	p, err := Prepare(ctx, hostShellGuest{t}, repo, ch, PrepareOptions{GuestPath: gdir})
	if err != nil {
		t.Fatal(err)
	}
	tracked := testutil.GitSh(t, host, "git ls-files | wc -l")
	if p.Copy.Files != 0 || p.Copy.Bytes != 0 || testutil.GitSh(t, gdir, "echo "+strconv.Itoa(p.Copy.CheckedOut)) != tracked {
		t.Fatalf("copy stats %+v, want 0 files sent and %s checked out", p.Copy, tracked)
	}
	if a, b := worktreeID(t, gdir), worktreeID(t, host); a != b {
		t.Fatalf("guest tree %s != host tree %s", a, b)
	}
	// The snapshot is HEAD's tree; the index is clean with stat data; the
	// list files are gone.
	if got := testutil.GitSh(t, gdir, "git rev-parse "+BaseRef+"^{tree} HEAD^{tree} | uniq | wc -l; git status --porcelain | wc -l; ls .git | grep -c kiln- || true"); got != "1\n0\n0" {
		t.Fatalf("guest after a clean prepare: %q", got)
	}
}

// ListChanges names what differs from HEAD on disk and what left the
// index; the guest built from them equals the host's work tree, however
// the host's index and disk disagree.
func TestListChanges(t *testing.T) {
	ctx := context.Background()
	r := system.ExecRunner{}
	host := newRepo(t)
	testutil.GitSh(t, host, `printf 'staged\n' >> src/deep/keep.txt; git add src/deep/keep.txt; printf 'then on disk\n' >> src/deep/keep.txt
git rm -q --cached docs/old-name.txt
chmod -x run.sh
rm link; mkdir link; printf 'in a dir now\n' > link/file
printf 'staged new\n' > new.txt; git add new.txt`)
	repo, err := Inspect(ctx, r, host)
	if err != nil {
		t.Fatal(err)
	}
	for _, untracked := range []bool{false, true} {
		ch, err := ListChanges(ctx, r, repo.Root, repo.Head, untracked)
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(ch.Copy)
		sort.Strings(ch.Remove)
		want := Changes{Copy: []string{"docs/gone.txt", "new.txt", "run.sh", "src/deep/keep.txt", "src/hello.txt"}, Remove: []string{"docs/old-name.txt", "link"}}
		if untracked {
			// The file untracked with `git rm --cached` comes along again.
			want = Changes{Copy: []string{"docs/gone.txt", "docs/old-name.txt", "link/file", "new.txt", "run.sh", "src/deep/keep.txt", "src/hello.txt", "untracked.txt"}, Remove: []string{"link"}}
		}
		if !reflect.DeepEqual(ch, want) {
			t.Fatalf("untracked=%v: changes %+v, want %+v", untracked, ch, want)
		}
		gdir := filepath.Join(t.TempDir(), "w")
		p, err := Prepare(ctx, hostShellGuest{t}, repo, ch, PrepareOptions{GuestPath: gdir, IncludeUntracked: untracked})
		if err != nil {
			t.Fatal(err)
		}
		if p.Copy.Missing != 1 || p.Copy.Files != len(want.Copy)-1 {
			t.Fatalf("untracked=%v: copy stats %+v", untracked, p.Copy)
		}
		// The host's tree as git sees it with the same files: move what
		// was not asked for out of the way.
		if !untracked {
			testutil.GitSh(t, host, "mkdir -p ../away && mv untracked.txt docs/old-name.txt link ../away/")
		}
		if a, b := worktreeID(t, gdir), worktreeID(t, host); a != b {
			t.Fatalf("untracked=%v: guest tree %s != host tree %s", untracked, a, b)
		}
		if !untracked {
			testutil.GitSh(t, host, "mv ../away/untracked.txt ../away/link . && mv ../away/old-name.txt docs/ && rmdir ../away")
		}
		if got := testutil.GitSh(t, gdir, "test ! -x run.sh && tail -n1 src/deep/keep.txt && git diff --cached --name-only | wc -l"); got != "then on disk\n0" {
			t.Fatalf("untracked=%v: guest: %q", untracked, got)
		}
		if _, err := os.Lstat(filepath.Join(gdir, "debug.log")); err == nil {
			t.Fatal("an ignored file went into the guest")
		}
	}
	// Listing every file (a superset of the changes) gives the same tree.
	files, err := ListFiles(ctx, r, repo.Root, true)
	if err != nil {
		t.Fatal(err)
	}
	gdir := filepath.Join(t.TempDir(), "all")
	if _, err := Prepare(ctx, hostShellGuest{t}, repo, Changes{Copy: files, Remove: []string{"link"}}, PrepareOptions{GuestPath: gdir, IncludeUntracked: true}); err != nil {
		t.Fatal(err)
	}
	if a, b := worktreeID(t, gdir), worktreeID(t, host); a != b {
		t.Fatalf("every file listed: guest tree %s != host tree %s", a, b)
	}
	if _, err := ListChanges(ctx, r, repo.Root, "HEAD", false); err == nil {
		t.Fatal("a ref name was taken for a commit id")
	}
}

// A file under a filter driver the guest lacks (Git LFS…) is copied as it
// is on disk, not checked out of the commit.
func TestPrepareCopiesFilteredFiles(t *testing.T) {
	ctx := context.Background()
	r := system.ExecRunner{}
	host := filepath.Join(t.TempDir(), "repo")
	testutil.GitSh(t, filepath.Dir(host), `git init -q -b main repo && cd repo && git config user.name A && git config user.email a@x
git config filter.upper.clean 'tr a-z A-Z' && git config filter.upper.smudge cat
printf '*.up filter=upper\n' > .gitattributes
printf 'lower on disk\n' > f.up && printf 'plain\n' > plain.txt
git add -A && git commit -qm one`)
	repo, err := Inspect(ctx, r, host)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := ListChanges(ctx, r, repo.Root, repo.Head, false)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ch, Changes{Copy: []string{"f.up"}}) {
		t.Fatalf("changes %+v, want f.up copied", ch)
	}
	gdir := filepath.Join(t.TempDir(), "w")
	if _, err := Prepare(ctx, hostShellGuest{t}, repo, ch, PrepareOptions{GuestPath: gdir}); err != nil {
		t.Fatal(err)
	}
	if got := testutil.GitSh(t, gdir, "cat f.up plain.txt"); got != "lower on disk\nplain" {
		t.Fatalf("guest files: %q", got)
	}
}

// Entries `git diff` does not look at — assume-unchanged, skip-worktree —
// go in as they are on disk.
func TestListChangesFlaggedEntries(t *testing.T) {
	ctx := context.Background()
	r := system.ExecRunner{}
	host := newRepo(t)
	testutil.GitSh(t, host, `git update-index --assume-unchanged src/deep/keep.txt && printf 'edited\n' > src/deep/keep.txt
git update-index --skip-worktree docs/old-name.txt && rm docs/old-name.txt`)
	repo, err := Inspect(ctx, r, host)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := ListChanges(ctx, r, repo.Root, repo.Head, false)
	if err != nil {
		t.Fatal(err)
	}
	gdir := filepath.Join(t.TempDir(), "w")
	if _, err := Prepare(ctx, hostShellGuest{t}, repo, ch, PrepareOptions{GuestPath: gdir}); err != nil {
		t.Fatal(err)
	}
	if got := testutil.GitSh(t, gdir, "cat src/deep/keep.txt; test ! -e docs/old-name.txt && echo absent"); got != "edited\nabsent" {
		t.Fatalf("guest: %q (changes %+v)", got, ch)
	}
}
