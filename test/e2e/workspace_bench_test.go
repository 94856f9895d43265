package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/testutil"
)

// benchRepoFiles is the size of the repository TestBenchmarkWorkspace copies.
const benchRepoFiles = 20000

// TestBenchmarkWorkspace is the workspace part of `make bench`: `kiln vm
// workspace prepare` of a repository of 20k small files against the plain
// pipeline `git archive HEAD | kiln vm exec -i VM -- tar -x` into the same
// guest. Its section of $KILN_BENCH_OUT is rewritten; the others are kept.
func TestBenchmarkWorkspace(t *testing.T) {
	out := os.Getenv("KILN_BENCH_OUT")
	if out == "" {
		t.Skip("set KILN_BENCH_OUT=FILE (make bench) to run the benchmarks")
	}
	h := setup(t)
	gitImage(t, h) // builds the cached rootfs tarball
	// The default image size is its content plus a little headroom: too
	// few blocks and inodes for two copies of the repository.
	h.mustKiln(t, "image", "import", "benchgit", "--rootfs-tar", testutil.GitRootfsTar(t), "--kernel", "test", "--size", "2G")
	t.Cleanup(func() { h.kiln(t, "image", "rm", "benchgit") })
	repo := benchRepo(t, benchRepoFiles)
	h.createVM(t, "benchws", "--image", "benchgit")
	const rounds = 3

	var prep, plain []time.Duration
	for i := 0; i < rounds; i++ {
		start := time.Now()
		h.mustKiln(t, "vm", "workspace", "prepare", "benchws", repo, "--guest-path", "/root/ws")
		prep = append(prep, time.Since(start))

		start = time.Now()
		archive := exec.Command("git", "-C", repo, "archive", "HEAD")
		archive.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_SYSTEM=/dev/null")
		tarball, err := archive.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var archErr bytes.Buffer
		archive.Stderr = &archErr
		if err := archive.Start(); err != nil {
			t.Fatal(err)
		}
		r := h.kilnIn(t, tarball, "vm", "exec", "-i", "-w", "/", "benchws", "--", "sh", "-c", "mkdir /root/arc && tar -x -C /root/arc")
		if err := archive.Wait(); err != nil || r.code != 0 {
			t.Fatalf("git archive | kiln vm exec tar -x: %v %s\n%s", err, archErr.String(), r)
		}
		plain = append(plain, time.Since(start))

		if i == 0 {
			// Both copies hold every file.
			r := h.mustKiln(t, "vm", "exec", "-w", "/", "benchws", "--", "sh", "-c",
				"git -C /root/ws ls-files | wc -l; find /root/arc -type f | wc -l; git -C /root/ws status --porcelain | wc -l")
			if want := fmt.Sprintf("%d\n%d\n0\n", benchRepoFiles, benchRepoFiles); r.stdout != want {
				t.Fatalf("guest copies: %q, want %q", r.stdout, want)
			}
		}
		h.mustKiln(t, "vm", "exec", "-w", "/", "benchws", "--", "rm", "-rf", "/root/ws", "/root/arc")
		t.Logf("round %d: prepare %s, git archive | tar -x %s", i, prep[i], plain[i])
	}

	ratio := float64(median(prep)) / float64(median(plain))
	var b strings.Builder
	fmt.Fprintf(&b, "## Workspaces\n\n`TestBenchmarkWorkspace`, %d rounds, on %s: a repository of %d small files in 20 directories, one commit.\n\n",
		rounds, time.Now().UTC().Format("2006-01-02"), benchRepoFiles)
	fmt.Fprintf(&b, "| measurement | kiln | baseline | ratio |\n| --- | --- | --- | --- |\n")
	fmt.Fprintf(&b, "| `kiln vm workspace prepare VM REPO` vs `git archive HEAD \\| kiln vm exec -i VM -- tar -x` into the same guest | %s | %s | **%.2f×** |\n\n",
		spread(prep), spread(plain), ratio)
	fmt.Fprintf(&b, "Both stream from the host into the guest through `vm exec` stdin, and each file's content crosses once. "+
		"Prepare sends the one-commit pack (`git pack-objects` on the host, `git index-pack` in the guest) and a tar of only "+
		"the files whose state on disk differs from HEAD (none here); the guest checks every other file out of the pack "+
		"(`git read-tree HEAD`, `git checkout-index -a -u`). What it adds over the baseline: the inspection of the host "+
		"repository (`git rev-parse`, `git diff --name-only HEAD`, `ls-files`), a second exec, the guest's index (whose stat "+
		"data makes `git status` cheap), and the snapshot commit `refs/kiln/base`, which hashes only the changed files.\n")
	if err := writeBenchSection(out, "workspace", b.String()); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + b.String())
}

// benchRepo makes a repository of n small files spread over 20
// directories, committed once.
func benchRepo(t *testing.T, n int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "big")
	for i := 0; i < n; i++ {
		sub := filepath.Join(dir, fmt.Sprintf("pkg%02d", i%20))
		if i < 20 {
			if err := os.MkdirAll(sub, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		body := fmt.Sprintf("// file %d\npackage p%d\n\nconst V%d = %d\n", i, i%20, i, i*7919)
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%05d.go", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	testutil.GitSh(t, dir, "git init -q -b main && git config user.name bench && git config user.email bench@example.org && git add -A && git commit -qm files")
	return dir
}
