package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/system"
	"github.com/kilnvm/kiln/internal/testutil"
)

// Uncommitted lists exactly the guest's changes since its HEAD — staged,
// unstaged, untracked — and leaves the guest's index as it was.
func TestUncommitted(t *testing.T) {
	ctx := context.Background()
	r := system.ExecRunner{}
	host := newRepo(t)
	repo, err := Inspect(ctx, r, host)
	if err != nil {
		t.Fatal(err)
	}
	files, err := ListChanges(ctx, r, repo.Root, repo.Head, false)
	if err != nil {
		t.Fatal(err)
	}
	g := hostShellGuest{t}
	gdir := filepath.Join(t.TempDir(), "w")
	if _, err := Prepare(ctx, g, repo, files, PrepareOptions{GuestPath: gdir}); err != nil {
		t.Fatal(err)
	}
	// The host's own uncommitted changes came along uncommitted.
	cs, err := Uncommitted(ctx, g, gdir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []Change{{"D", "docs/gone.txt"}, {"M", "src/hello.txt"}}; !reflect.DeepEqual(cs, want) {
		t.Fatalf("after prepare: %v, want %v", cs, want)
	}
	testutil.GitSh(t, gdir, `git commit -qam 'guest work'
printf 'staged\n' > staged.txt; git add staged.txt
printf 'more\n' >> src/deep/keep.txt
printf 'new\n' > 'with space.txt'
printf 'x\n' > ignored.log`)
	index := testutil.GitSh(t, gdir, "sha256sum .git/index")
	cs, err = Uncommitted(ctx, g, gdir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []Change{{"M", "src/deep/keep.txt"}, {"A", "staged.txt"}, {"A", "with space.txt"}}; !reflect.DeepEqual(cs, want) {
		t.Fatalf("after guest work: %v, want %v", cs, want)
	}
	if testutil.GitSh(t, gdir, "sha256sum .git/index") != index {
		t.Fatal("Uncommitted changed the guest's index")
	}
	testutil.GitSh(t, gdir, "git add -A && git commit -qm all")
	if cs, err := Uncommitted(ctx, g, gdir); err != nil || len(cs) != 0 {
		t.Fatalf("clean work tree: %v %v", cs, err)
	}
	if _, err := Uncommitted(ctx, g, filepath.Join(t.TempDir(), "none")); !errors.Is(err, api.ErrFailedPrecondition) {
		t.Fatalf("no workspace: %v", err)
	}
}

// The export stream is split right however the guest's output is chunked.
func TestNamesThenPatchChunking(t *testing.T) {
	names := "M\x00a b\x00A\x00c\n\x00"
	stream := fmt.Sprint(len(names)) + "\n" + names + "diff --git a/x b/x\n"
	for _, size := range []int{1, 2, 3, 7, len(stream)} {
		var patch bytes.Buffer
		s := &namesThenPatch{w: &patch, need: -1}
		for i := 0; i < len(stream); i += size {
			if _, err := s.Write([]byte(stream[i:min(i+size, len(stream))])); err != nil {
				t.Fatal(err)
			}
		}
		cs, err := parseNameStatus(s.names)
		if err != nil || !s.done {
			t.Fatalf("chunk %d: %v done=%v", size, err, s.done)
		}
		if want := []Change{{"M", "a b"}, {"A", "c\n"}}; !reflect.DeepEqual(cs, want) || patch.String() != "diff --git a/x b/x\n" {
			t.Fatalf("chunk %d: %q %q", size, cs, patch.String())
		}
	}
	if _, err := (&namesThenPatch{w: io.Discard, need: -1}).Write([]byte("nonsense\n")); err == nil {
		t.Fatal("a malformed length was accepted")
	}
	if _, err := parseNameStatus([]byte("M\x00")); err == nil {
		t.Fatal("an odd name list was accepted")
	}
}

// What is on disk goes in, whatever the index says: a file staged and
// edited again, a staged new file, a rename not yet committed, a file
// deleted but still in the index, an executable bit changed.
func TestPrepareCarriesUncommittedHostChanges(t *testing.T) {
	ctx := context.Background()
	r := system.ExecRunner{}
	host := newRepo(t)
	testutil.GitSh(t, host, `printf 'staged\n' >> src/deep/keep.txt; git add src/deep/keep.txt; printf 'then on disk\n' >> src/deep/keep.txt
printf 'added\n' > added.txt; git add added.txt
git mv docs/old-name.txt docs/renamed.txt
chmod -x run.sh`)
	repo, err := Inspect(ctx, r, host)
	if err != nil {
		t.Fatal(err)
	}
	files, err := ListChanges(ctx, r, repo.Root, repo.Head, false)
	if err != nil {
		t.Fatal(err)
	}
	gdir := filepath.Join(t.TempDir(), "w")
	if _, err := Prepare(ctx, hostShellGuest{t}, repo, files, PrepareOptions{GuestPath: gdir}); err != nil {
		t.Fatal(err)
	}
	// The guest's tree is the host's as on disk, minus the untracked file
	// (not asked for); ignored files never go.
	testutil.GitSh(t, host, "mv untracked.txt ../untracked.txt.away")
	if a, b := worktreeID(t, gdir), worktreeID(t, host); a != b {
		t.Fatalf("guest tree %s != host tree on disk %s", a, b)
	}
	if got := testutil.GitSh(t, gdir, "tail -n1 src/deep/keep.txt; cat added.txt docs/renamed.txt; test ! -e docs/old-name.txt; test ! -x run.sh; test ! -e untracked.txt; test ! -e debug.log && echo ok"); got != "then on disk\nadded\nold\nok" {
		t.Fatalf("guest files: %q", got)
	}
	// The base records the work tree as copied: nothing to export yet.
	var patch bytes.Buffer
	if cs, err := Patch(ctx, hostShellGuest{t}, gdir, "", &patch); err != nil || len(cs) != 0 || patch.Len() != 0 {
		t.Fatalf("export right after prepare: %v %v %q", cs, err, patch.String())
	}
}

// A real submodule is found by Inspect and refused; --full-copy brings it
// in, its files and the whole history included.
func TestSubmodules(t *testing.T) {
	ctx := context.Background()
	r := system.ExecRunner{}
	parent := t.TempDir()
	testutil.GitSh(t, parent, `git init -q -b main lib && cd lib && git config user.name L && git config user.email l@x
printf 'lib\n' > lib.c && git add -A && git commit -qm lib && cd ..
git init -q -b main app && cd app && git config user.name A && git config user.email a@x
printf 'app\n' > main.c && git add -A && git commit -qm one
git -c protocol.file.allow=always submodule -q add ../lib vendor/lib
git commit -qm 'add lib' && printf 'two\n' >> main.c && git commit -qam two`)
	app := filepath.Join(parent, "app")
	repo, err := Inspect(ctx, r, app)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(repo.Submodules, []string{"vendor/lib"}) {
		t.Fatalf("submodules: %v", repo.Submodules)
	}
	files, err := ListFiles(ctx, r, repo.Root, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasPrefix(f, "vendor/lib") {
			t.Fatalf("the submodule is listed as a file: %v", files)
		}
	}
	g := hostShellGuest{t}
	refused := filepath.Join(t.TempDir(), "refused")
	_, err = Prepare(ctx, g, repo, Changes{Copy: files}, PrepareOptions{GuestPath: refused})
	if !errors.Is(err, api.ErrFailedPrecondition) || !strings.Contains(err.Error(), "vendor/lib") || !strings.Contains(api.HintOf(err), "--full-copy") {
		t.Fatalf("prepare with a submodule: %v", err)
	}
	if _, err := os.Stat(refused); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused prepare touched the guest: %v", err)
	}
	full := filepath.Join(t.TempDir(), "full")
	if _, err := Prepare(ctx, g, repo, Changes{}, PrepareOptions{GuestPath: full, FullCopy: true}); err != nil {
		t.Fatal(err)
	}
	if got := testutil.GitSh(t, full, "cat vendor/lib/lib.c; git rev-list --count HEAD; git -C vendor/lib log --format=%s"); got != "lib\n3\nlib" {
		t.Fatalf("full copy: %q", got)
	}
}

// WriteTar reads each file only when the consumer has taken the previous
// one: nothing is staged on the host first. Deleting a file while the
// stream is half-read shows up as Missing.
func TestWriteTarStreams(t *testing.T) {
	root := t.TempDir()
	for _, f := range []string{"a", "b", "c"} {
		if err := os.WriteFile(filepath.Join(root, f), bytes.Repeat([]byte(f), 100<<10), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pr, pw := io.Pipe()
	type result struct {
		st  CopyStats
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := WriteTar(context.Background(), root, []string{"a", "b", "c"}, pw)
		pw.CloseWithError(err)
		done <- result{st, err}
	}()
	tr := tar.NewReader(pr)
	hdr, err := tr.Next()
	if err != nil || hdr.Name != "a" {
		t.Fatalf("first entry: %v %v", hdr, err)
	}
	// "a" is being written; "c" has not been looked at yet.
	if err := os.Remove(filepath.Join(root, "c")); err != nil {
		t.Fatal(err)
	}
	var names []string
	for {
		if _, err := io.Copy(io.Discard, tr); err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		if hdr, err = tr.Next(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	res := <-done
	if res.err != nil || !reflect.DeepEqual(names, []string{"a", "b"}) || res.st.Files != 2 || res.st.Missing != 1 || res.st.Bytes != 200<<10 {
		t.Fatalf("entries %v, stats %+v, err %v", names, res.st, res.err)
	}
}

// The history that goes in is HEAD's objects only: a large file in an
// older commit costs nothing.
func TestPackHoldsOnlyHead(t *testing.T) {
	dir := t.TempDir()
	testutil.GitSh(t, dir, `git init -q -b main && git config user.name A && git config user.email a@x
head -c 2000000 /dev/urandom > big.bin && git add -A && git commit -qm big
git rm -q big.bin && printf 'small\n' > small.txt && git add -A && git commit -qm small`)
	head := testutil.GitSh(t, dir, "git rev-parse HEAD")
	pack, wait, err := packCommit(context.Background(), dir, head)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(pack)
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if len(b) > 4096 {
		t.Fatalf("the pack of HEAD is %d bytes: it carries history", len(b))
	}
	// It holds HEAD's commit, tree and blob: three objects.
	idx := exec.Command("git", "index-pack", "--stdin", "--fix-thin")
	gd := t.TempDir()
	testutil.GitSh(t, gd, "git init -q")
	idx.Dir = gd
	idx.Stdin = bytes.NewReader(b)
	if out, err := idx.CombinedOutput(); err != nil {
		t.Fatalf("index-pack: %v %s", err, out)
	}
	if got := testutil.GitSh(t, gd, "git count-objects -v | sed -n 's/^in-pack: //p'"); got != "3" {
		t.Fatalf("objects in the pack: %s", got)
	}
}
