package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/testutil"
)

// gitImage imports, once per harness, the Debian image with git (its
// rootfs tarball is cached across runs by testutil) as "gitimg".
func gitImage(t *testing.T, h *harness) string {
	t.Helper()
	if r := h.kiln(t, "image", "show", "gitimg"); r.code == 0 {
		return "gitimg"
	}
	tarball := testutil.GitRootfsTar(t)
	h.mustKiln(t, "image", "import", "gitimg", "--rootfs-tar", tarball, "--kernel", "test")
	return "gitimg"
}

// wsRepo makes a host repository with every kind of file, uncommitted
// changes, an untracked and an ignored file.
func wsRepo(t *testing.T) string {
	t.Helper()
	parent := t.TempDir()
	testutil.GitSh(t, parent, `git init -q -b main repo
cd repo
git config user.name 'Ada Host'
git config user.email ada@example.org
mkdir -p src docs
printf 'hello\n' > src/hello.txt
printf 'gone\n' > docs/gone.txt
printf 'old\n' > docs/old-name.txt
printf '#!/bin/sh\necho run\n' > run.sh; chmod +x run.sh
head -c 3000 /dev/urandom > blob.bin
ln -s src/hello.txt link
printf '*.log\n' > .gitignore
git add -A
git commit -qm initial
printf 'uncommitted\n' >> src/hello.txt
rm docs/gone.txt
printf 'new\n' > untracked.txt
printf 'noise\n' > debug.log`)
	return filepath.Join(parent, "repo")
}

// treeScript prints the tree id of the work tree as `git add -A` sees it,
// through a temporary index.
const treeScript = `export GIT_INDEX_FILE=$(mktemp); rm -f $GIT_INDEX_FILE; git add -A; git write-tree; rm -f $GIT_INDEX_FILE`

func TestWorkspacePrepareExportRoundTrip(t *testing.T) {
	h := setup(t)
	img := gitImage(t, h)
	repo := wsRepo(t)
	h.createVM(t, "ws1", "--image", img)

	// Failures first: nothing is recorded, nothing is copied.
	if r := h.kiln(t, "vm", "workspace", "prepare", "ws1", t.TempDir()); r.code != 12 || !strings.Contains(r.stderr, "not inside a git work tree") {
		t.Fatalf("prepare of a non-repository: %s", r)
	}
	if r := h.kiln(t, "vm", "workspace", "export", "ws1"); r.code != 15 || !strings.Contains(r.stderr, "no workspace") {
		t.Fatalf("export before prepare: %s", r)
	}
	if r := h.mustKiln(t, "vm", "workspace", "prepare", "--dry-run", "ws1", repo); !strings.Contains(r.stdout, "files") {
		t.Fatalf("dry run: %s", r)
	}
	if r := h.kiln(t, "vm", "exec", "ws1", "--", "test", "-e", "/root/repo"); r.code != 1 {
		t.Fatalf("--dry-run copied something: %s", r)
	}

	h.mustKiln(t, "vm", "workspace", "prepare", "--include-untracked", "ws1", repo)
	vm, err := h.client().GetVM(context.Background(), "ws1")
	if err != nil || vm.Workspace == nil || vm.Workspace.GuestPath != "/root/repo" || vm.Workspace.HostPath != repo {
		t.Fatalf("recorded workspace: %+v %v", vm.Workspace, err)
	}
	// exec runs in the workspace; the guest's tree is the host's as on disk.
	r := h.mustKiln(t, "vm", "exec", "ws1", "--", "sh", "-c", "pwd; git config user.email; test ! -e debug.log && test -x run.sh && readlink link; "+treeScript)
	hostTree := testutil.GitSh(t, repo, treeScript)
	if want := "/root/repo\nada@example.org\nsrc/hello.txt\n" + hostTree + "\n"; r.stdout != want {
		t.Fatalf("guest workspace:\n%q\nwant\n%q", r.stdout, want)
	}
	// A second prepare into the same directory is refused.
	if r := h.kiln(t, "vm", "workspace", "prepare", "ws1", repo); r.code != 15 || !strings.Contains(r.stderr, "not empty") {
		t.Fatalf("prepare over a workspace: %s", r)
	}

	// Work in the guest: a commit, then uncommitted edits of every kind.
	h.mustKiln(t, "vm", "exec", "ws1", "--", "sh", "-c", `set -e
git mv docs/old-name.txt docs/new-name.txt
printf 'committed in the guest\n' >> src/hello.txt
git commit -qam 'guest work'
head -c 2000 /dev/urandom >> blob.bin
chmod +x src/hello.txt
rm run.sh
ln -s ../blob.bin src/link2
printf 'fresh\n' > fresh.txt
printf 'ignored\n' > more.log`)
	index := h.mustKiln(t, "vm", "exec", "ws1", "--", "sha256sum", ".git/index").stdout

	patch := filepath.Join(t.TempDir(), "ws.patch")
	r = h.mustKiln(t, "vm", "workspace", "export", "ws1", "--output", patch)
	for _, want := range []string{"docs/new-name.txt", "blob.bin", "run.sh", "fresh.txt", "src/link2"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("changed files %q lack %s", r.stderr, want)
		}
	}
	if got := h.mustKiln(t, "vm", "exec", "ws1", "--", "sha256sum", ".git/index").stdout; got != index {
		t.Fatalf("export changed the guest's index")
	}
	// --json lists the changed files on stdout; the patch then needs a file.
	if r := h.kiln(t, "vm", "workspace", "export", "ws1", "--json"); r.code != 12 || !strings.Contains(r.stderr, "--output") {
		t.Fatalf("export --json without --output: %s", r)
	}
	var listed struct {
		Output string `json:"output"`
		Bytes  int64  `json:"bytes"`
		Files  []struct{ Status, Path string }
	}
	r = h.mustKiln(t, "vm", "workspace", "export", "ws1", "--json", "-o", patch+".j")
	if err := json.Unmarshal([]byte(r.stdout), &listed); err != nil {
		t.Fatalf("export --json: %v: %s", err, r.stdout)
	}
	statuses := map[string]string{}
	for _, f := range listed.Files {
		statuses[f.Path] = f.Status
	}
	if fi, err := os.Stat(patch + ".j"); err != nil || fi.Size() != listed.Bytes || statuses["fresh.txt"] != "A" || statuses["run.sh"] != "D" || statuses["blob.bin"] != "M" {
		t.Fatalf("export --json: %+v (patch file: %v %v)", listed, fi, err)
	}
	testutil.GitSh(t, repo, "git apply "+patch)
	guestTree := strings.TrimSpace(h.mustKiln(t, "vm", "exec", "ws1", "--", "sh", "-c", treeScript).stdout)
	if got := testutil.GitSh(t, repo, treeScript); got != guestTree {
		t.Fatalf("after git apply the host's tree is %s, the guest's %s", got, guestTree)
	}
	// Now the host holds the changes: exporting again conflicts, said so.
	if r := h.kiln(t, "vm", "workspace", "export", "ws1", "-o", patch+".2"); r.code != 13 || !strings.Contains(r.stderr, "moved on") {
		t.Fatalf("export onto a host that moved on: %s", r)
	}

	// The guest's commit comes back as a host branch.
	r = h.mustKiln(t, "vm", "workspace", "export", "ws1", "--branch", "from-guest")
	if !strings.Contains(r.stdout, "guest work") {
		t.Fatalf("branch export: %s", r)
	}
	// The uncommitted guest changes are not in the branch, and it says so.
	if !strings.Contains(r.stderr, "warning: ") || !strings.Contains(r.stderr, "not in branch from-guest") || !strings.Contains(r.stderr, "fresh.txt") {
		t.Fatalf("branch export does not warn about uncommitted changes: %s", r)
	}
	if got := testutil.GitSh(t, repo, "git log --format=%an:%s -1 from-guest"); got != "Ada Host:guest work" {
		t.Fatalf("host branch head: %q", got)
	}
	if r := h.kiln(t, "vm", "workspace", "export", "ws1", "--branch", "from-guest"); r.code != 11 {
		t.Fatalf("export into an existing branch: %s", r)
	}
}

func TestWorkspaceRunExitCodeAndStreaming(t *testing.T) {
	h := setup(t)
	img := gitImage(t, h)
	repo := wsRepo(t)

	r := h.kiln(t, "vm", "run", "--rm", "--image", img, "--name", "wsrun1", repo, "--", "sh", "-c", "test -f src/hello.txt && exit 3")
	if r.code != 3 {
		t.Fatalf("vm run PATH -- exit 3: %s\n%s", r, h.daemonLog())
	}
	if _, err := h.client().GetVM(context.Background(), "wsrun1"); err == nil {
		t.Fatal("--rm left the VM behind")
	}

	// A failing build's output arrives while it runs: the command prints,
	// then waits for a file that the test creates only once it has seen
	// the output.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = h.client().DeleteVM(ctx, "wsrun2")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(h.bin, "kiln"), "--config", h.config, "vm", "run", "--rm", "--image", img, "--name", "wsrun2", repo,
		"--", "sh", "-c", "echo compiling; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo 'error: it broke' >&2; exit 2")
	cmd.Env = h.env
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case l := <-lines:
		if l != "compiling" {
			t.Fatalf("first line %q", l)
		}
	case <-ctx.Done():
		t.Fatalf("no output while the command ran; stderr: %s", stderr.String())
	}
	h.mustKiln(t, "vm", "exec", "wsrun2", "--", "touch", "/tmp/go")
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("vm run: %v, want exit 2; stderr: %s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "error: it broke") {
		t.Fatalf("stderr lacks the build's error: %s", stderr.String())
	}
}
