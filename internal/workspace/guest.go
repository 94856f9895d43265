package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/guest"
)

// Guest runs shell commands in a VM; *guest.Client is one.
type Guest interface {
	Exec(ctx context.Context, req guest.ExecRequest) (int, error)
}

// BaseRef is the guest ref of the snapshot commit Prepare makes of the
// work tree as it was copied (HEAD plus the host's uncommitted changes): a
// patch against it holds exactly what changed in the guest.
const BaseRef = "refs/kiln/base"

// Exit codes the guest scripts use for the failures they explain.
const (
	codeNoGit       = 97
	codeNotEmpty    = 98
	codeBadBase     = 96
	codeNoCommits   = 95
	codeNoWorkspace = 94
)

// Quote quotes s for a POSIX shell.
func Quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// ValidGuestPath checks a workspace directory in the guest: absolute,
// clean, not the root.
func ValidGuestPath(p string) error {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" || strings.ContainsAny(p, "\x00\n") {
		return fmt.Errorf("guest path %q: want a clean absolute directory other than /: %w", p, api.ErrBadRequest)
	}
	return nil
}

// run runs script in the guest with stdin and stdout, returning an error
// carrying the script's stderr when it fails.
func run(ctx context.Context, g Guest, what, script string, stdin io.Reader, stdout io.Writer) error {
	_, err := runErr(ctx, g, what, script, stdin, stdout)
	return err
}

// runErr is run that also returns the script's stderr (its first 1 MiB).
func runErr(ctx context.Context, g Guest, what, script string, stdin io.Reader, stdout io.Writer) (string, error) {
	var stderr bytes.Buffer
	code, err := g.Exec(ctx, guest.ExecRequest{Command: script, Stdin: stdin, Stdout: stdout, Stderr: &limited{w: &stderr, n: 1 << 20}})
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if code == 0 {
		return stderr.String(), nil
	}
	return "", scriptError(what, code, strings.TrimSpace(stderr.String()))
}

func scriptError(what string, code int, msg string) error {
	switch code {
	case codeNoGit:
		return api.Hinted(fmt.Errorf("%s: git is not installed in the guest: %w", what, api.ErrFailedPrecondition),
			"use an image with git (e.g. `kiln image build NAME --debootstrap bookworm --include git`)")
	case codeNotEmpty, codeNoWorkspace, codeNoCommits:
		return fmt.Errorf("%s: %s: %w", what, msg, api.ErrFailedPrecondition)
	case codeBadBase:
		return fmt.Errorf("%s: %s: %w", what, msg, api.ErrNotFound)
	}
	return fmt.Errorf("%s: the guest command exited %d: %s", what, code, msg)
}

// limited keeps the first n bytes written and drops the rest.
type limited struct {
	w io.Writer
	n int
}

func (l *limited) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}

// PrepareOptions say how a workspace is made.
type PrepareOptions struct {
	GuestPath        string
	IncludeUntracked bool
	// Branch is the guest branch; empty takes the host's, or "kiln" when
	// the host's HEAD is detached.
	Branch string
	// From, a commit id, checks out that commit's tree instead of copying
	// the host's work tree.
	From string
	// FullCopy copies the whole directory, .git and submodules included.
	FullCopy bool
}

// Prepared describes a made workspace.
type Prepared struct {
	GuestPath string    `json:"guest_path"`
	Head      string    `json:"head_commit"`
	Branch    string    `json:"branch"`
	Copy      CopyStats `json:"copy"`
}

// Prepare makes a workspace of repo at opts.GuestPath in the guest, which
// must be absent or empty. Normally (1) the commit (HEAD, or opts.From) and
// its trees and blobs go in as one pack — a history of depth one, so
// commits can be made in the guest — and (2) a tar streamed from disk
// carries only the host's uncommitted changes (ch, from ListChanges); the
// guest checks every other file out of the commit (`git checkout-index`,
// which records their stat data), places the changed ones as they are on
// disk, and records BaseRef, a snapshot commit of the work tree, hashing
// only the changed files. With opts.From the commit's tree is checked out
// and ch is unused. The guest's git identity is the host's. Submodules are
// refused (failed_precondition) unless FullCopy.
func Prepare(ctx context.Context, g Guest, repo Repo, ch Changes, opts PrepareOptions) (Prepared, error) {
	if err := ValidGuestPath(opts.GuestPath); err != nil {
		return Prepared{}, err
	}
	if len(repo.Submodules) > 0 && !opts.FullCopy {
		return Prepared{}, api.Hinted(fmt.Errorf("repository %s has submodules (%s): %w", repo.Root, strings.Join(repo.Submodules, ", "), api.ErrFailedPrecondition),
			"--full-copy copies the whole directory, .git and submodules included")
	}
	head := repo.Head
	if opts.From != "" {
		if !ValidCommit(opts.From) {
			return Prepared{}, fmt.Errorf("--from %q: want a commit id: %w", opts.From, api.ErrBadRequest)
		}
		head = opts.From
	}
	branch := opts.Branch
	if branch == "" {
		branch = repo.Branch
	}
	if branch == "" {
		branch = "kiln"
	}
	res := Prepared{GuestPath: opts.GuestPath, Head: head, Branch: branch}
	dir := Quote(opts.GuestPath)
	identity := identityScript(repo)
	preamble := "set -e\ncommand -v git >/dev/null 2>&1 || exit " + fmt.Sprint(codeNoGit) + "\n" +
		"if [ -e " + dir + " ] && [ -n \"$(ls -A " + dir + ")\" ]; then echo " + Quote(opts.GuestPath+" exists in the guest and is not empty") + " >&2; exit " + fmt.Sprint(codeNotEmpty) + "; fi\n" +
		"mkdir -p " + dir + "\ncd " + dir + "\n"
	snapshot := "idx=.git/kiln-index; rm -f $idx; if [ -f .git/index ]; then cp .git/index $idx; fi\n" +
		"GIT_INDEX_FILE=$idx git add -A\n" +
		"tree=$(GIT_INDEX_FILE=$idx git write-tree)\n" +
		"snap=$(GIT_AUTHOR_NAME=kiln GIT_AUTHOR_EMAIL=kiln@localhost GIT_COMMITTER_NAME=kiln GIT_COMMITTER_EMAIL=kiln@localhost git commit-tree -p HEAD -m 'kiln: the workspace as prepared' $tree)\n" +
		"git update-ref " + BaseRef + " $snap\n"

	if opts.FullCopy {
		pr, pw := io.Pipe()
		go func() {
			st, err := WriteFullTar(ctx, repo.Root, pw)
			res.Copy = st
			pw.CloseWithError(err)
		}()
		script := preamble + "tar -x -f -\n" + identity + snapshot + "rm -f $idx\n"
		if err := run(ctx, g, "copy the repository into the guest", script, pr, io.Discard); err != nil {
			pr.CloseWithError(err)
			return res, err
		}
		return res, nil
	}

	// (1) the history: one commit, its trees and blobs, as a pack.
	pack, wait, err := packCommit(ctx, repo.Root, head)
	if err != nil {
		return res, err
	}
	script := preamble + "git init -q -b " + Quote(branch) + "\n" +
		"git index-pack --stdin >/dev/null\n" +
		"echo " + head + " > .git/shallow\n" +
		"git update-ref refs/heads/" + Quote(branch) + " " + head + "\n" +
		identity
	if repo.Origin != "" {
		script += "git remote add origin " + Quote(repo.Origin) + "\n"
	}
	err = run(ctx, g, "send the history into the guest", script, pack, io.Discard)
	if werr := wait(); err == nil && werr != nil {
		err = fmt.Errorf("pack commit %s: %w", head, werr)
	}
	if err != nil {
		return res, err
	}

	// (2) the files.
	if opts.From != "" {
		script = "set -e\ncd " + dir + "\ngit reset -q --hard\ngit update-ref " + BaseRef + " HEAD\n"
		return res, run(ctx, g, "check out the workspace in the guest", script, nil, io.Discard)
	}
	pr, pw := io.Pipe()
	var st CopyStats
	done := make(chan struct{})
	go func() {
		defer close(done)
		var err error
		st, err = writeChanges(ctx, repo.Root, ch, pw)
		pw.CloseWithError(err)
	}()
	var out bytes.Buffer
	err = run(ctx, g, "copy the files into the guest", "set -e\ncd "+dir+"\n"+applyScript, pr, &out)
	pr.CloseWithError(err) // a writer the guest stopped reading returns
	<-done
	res.Copy = st
	if err != nil {
		return res, err
	}
	res.Copy.CheckedOut, _ = strconv.Atoi(strings.TrimSpace(out.String()))
	return res, nil
}

// Guest files carrying the lists of changed paths inside the tar.
const (
	copyList   = ".git/kiln-copy"
	removeList = ".git/kiln-remove"
)

// applyScript runs in the workspace with the tar of writeChanges on
// stdin: it places the changed files, checks every other file of HEAD out
// of the pack (the index then holds their stat data), prints how many,
// records the work tree as BaseRef — hashing only the changed files — and
// leaves an index at HEAD, so the host's changes show as unstaged.
const applyScript = "tar -x -f -\n" +
	"git read-tree HEAD\n" +
	"git update-index -z --force-remove --stdin < " + copyList + "\n" +
	"git update-index -z --force-remove --stdin < " + removeList + "\n" +
	"git checkout-index -a -u\n" +
	"git ls-files | wc -l\n" +
	"idx=.git/kiln-index; cp .git/index $idx\n" +
	"GIT_INDEX_FILE=$idx git update-index -z --add --remove --stdin < " + copyList + "\n" +
	"tree=$(GIT_INDEX_FILE=$idx git write-tree)\n" +
	"snap=$(GIT_AUTHOR_NAME=kiln GIT_AUTHOR_EMAIL=kiln@localhost GIT_COMMITTER_NAME=kiln GIT_COMMITTER_EMAIL=kiln@localhost git commit-tree -p HEAD -m 'kiln: the workspace as prepared' $tree)\n" +
	"git update-ref " + BaseRef + " $snap\n" +
	"rm -f $idx " + copyList + " " + removeList + "\n" +
	"git reset -q\n"

// writeChanges streams the tar applyScript reads: the two NUL-separated
// path lists first, then the files of ch.Copy as they are on disk.
func writeChanges(ctx context.Context, root string, ch Changes, w io.Writer) (CopyStats, error) {
	// A listed path that is now a directory (or a socket…) on disk is not
	// copied: the guest removes it from the index instead.
	var copyPaths []string
	removePaths := append([]string(nil), ch.Remove...)
	for _, p := range ch.Copy {
		fi, err := os.Lstat(filepath.Join(root, p))
		if err == nil && !fi.Mode().IsRegular() && fi.Mode()&os.ModeSymlink == 0 {
			removePaths = append(removePaths, p)
			continue
		}
		copyPaths = append(copyPaths, p)
	}
	tw := tar.NewWriter(w)
	for _, l := range []struct {
		name  string
		paths []string
	}{{copyList, copyPaths}, {removeList, removePaths}} {
		var b bytes.Buffer
		for _, p := range l.paths {
			if !filepath.IsLocal(p) {
				return CopyStats{}, fmt.Errorf("refusing path %q that leaves the repository", p)
			}
			b.WriteString(p)
			b.WriteByte(0)
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: l.name, Mode: 0o600, Size: int64(b.Len()), Format: tar.FormatPAX}); err != nil {
			return CopyStats{}, err
		}
		if _, err := tw.Write(b.Bytes()); err != nil {
			return CopyStats{}, err
		}
	}
	st, err := addFiles(ctx, tw, root, copyPaths)
	if err != nil {
		return st, err
	}
	return st, tw.Close()
}

func identityScript(repo Repo) string {
	s := ""
	if repo.UserName != "" {
		s += "git config user.name " + Quote(repo.UserName) + "\n"
	}
	if repo.UserEmail != "" {
		s += "git config user.email " + Quote(repo.UserEmail) + "\n"
	}
	return s
}

// packCommit streams a pack of commit and every tree and blob it holds —
// not its history — from `git rev-list --objects -n 1 | git pack-objects`.
// wait reports how the two ended, once the pack has been read.
func packCommit(ctx context.Context, root, commit string) (io.Reader, func() error, error) {
	list := exec.CommandContext(ctx, "git", "-C", root, "rev-list", "--objects", "--no-object-names", "-n", "1", commit)
	pack := exec.CommandContext(ctx, "git", "-C", root, "pack-objects", "--stdout", "-q", "--window=0", "--compression=1")
	var listErr, packErr bytes.Buffer
	list.Stderr, pack.Stderr = &listErr, &packErr
	lout, err := list.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	pack.Stdin = lout
	pout, err := pack.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := list.Start(); err != nil {
		return nil, nil, fmt.Errorf("git rev-list: %w", err)
	}
	if err := pack.Start(); err != nil {
		_ = list.Process.Kill()
		_ = list.Wait()
		return nil, nil, fmt.Errorf("git pack-objects: %w", err)
	}
	wait := func() error {
		// Drain what the guest did not read, so pack-objects can exit.
		_, _ = io.Copy(io.Discard, pout)
		err1 := list.Wait()
		err2 := pack.Wait()
		if err1 != nil {
			return fmt.Errorf("git rev-list: %w: %s", err1, strings.TrimSpace(listErr.String()))
		}
		if err2 != nil {
			return fmt.Errorf("git pack-objects: %w: %s", err2, strings.TrimSpace(packErr.String()))
		}
		return nil
	}
	return pout, wait, nil
}

// Change is one path changed in the guest: its status as `git diff
// --name-status --no-renames` prints it (A added, D deleted, M modified, T
// type changed) and its path in the repository.
type Change struct {
	Status string `json:"status"`
	Path   string `json:"path"`
}

// stageScript stages the whole work tree (untracked non-ignored files
// included) into a temporary copy of the guest's index, exported as
// GIT_INDEX_FILE, so the guest's own index is never written.
const stageScript = "idx=$(mktemp); names=$(mktemp); trap 'rm -f \"$idx\" \"$names\"' EXIT; rm -f \"$idx\"\n" +
	"if [ -f .git/index ]; then cp .git/index \"$idx\"; fi\n" +
	"export GIT_INDEX_FILE=\"$idx\"\n" +
	"git add -A\n"

// Patch writes to w a binary-safe patch (`git diff --binary`) from base (a
// commit or ref in the guest; BaseRef when empty) to the guest's work tree,
// untracked non-ignored files and commits made in the guest included, and
// returns the changed files. It stages into a temporary index, so the
// guest's own index is untouched. The patch is streamed: one exec prints
// the length of the NUL-separated name list, the list, then the patch.
func Patch(ctx context.Context, g Guest, guestPath, base string, w io.Writer) ([]Change, error) {
	if err := ValidGuestPath(guestPath); err != nil {
		return nil, err
	}
	if base == "" {
		base = BaseRef
	}
	if strings.HasPrefix(base, "-") || strings.ContainsAny(base, " \n\t'\"\\") {
		return nil, fmt.Errorf("base %q: want a commit id or ref: %w", base, api.ErrBadRequest)
	}
	script := cdWorkspace(guestPath) +
		"git rev-parse -q --verify " + Quote(base+"^{commit}") + " >/dev/null || { echo " + Quote("base "+base+" is not a commit in the guest's repository") + " >&2; exit " + fmt.Sprint(codeBadBase) + "; }\n" +
		stageScript +
		"git diff --cached --name-status -z --no-renames " + Quote(base) + " > \"$names\"\n" +
		"wc -c < \"$names\"; cat \"$names\"\n" +
		"git diff --cached --binary --no-color --no-ext-diff --no-textconv " + Quote(base) + "\n"
	sp := &namesThenPatch{w: w, need: -1}
	if err := run(ctx, g, "export the workspace's changes", script, nil, sp); err != nil {
		return nil, err
	}
	if !sp.done {
		return nil, fmt.Errorf("export the workspace's changes: the guest's output ended before the list of changed files")
	}
	return parseNameStatus(sp.names)
}

// Uncommitted returns what changed in the guest's work tree since its HEAD
// commit — staged, unstaged and untracked non-ignored files — without
// touching the guest's index: what a branch of the guest's commits leaves out.
func Uncommitted(ctx context.Context, g Guest, guestPath string) ([]Change, error) {
	if err := ValidGuestPath(guestPath); err != nil {
		return nil, err
	}
	script := cdWorkspace(guestPath) + stageScript + "git diff --cached --name-status -z --no-renames HEAD\n"
	var out bytes.Buffer
	if err := run(ctx, g, "list the guest's uncommitted changes", script, nil, &out); err != nil {
		return nil, err
	}
	return parseNameStatus(out.Bytes())
}

// parseNameStatus parses `git diff --name-status -z --no-renames`:
// status NUL path NUL, repeated.
func parseNameStatus(b []byte) ([]Change, error) {
	if len(b) == 0 {
		return nil, nil
	}
	f := bytes.Split(bytes.TrimSuffix(b, []byte{0}), []byte{0})
	if len(f)%2 != 0 {
		return nil, fmt.Errorf("malformed list of changed files from the guest: %q", b)
	}
	cs := make([]Change, 0, len(f)/2)
	for i := 0; i < len(f); i += 2 {
		cs = append(cs, Change{Status: string(f[i]), Path: string(f[i+1])})
	}
	return cs, nil
}

// namesThenPatch splits the export stream: a decimal length and a newline,
// that many bytes of name list (kept), then the patch (passed on to w).
type namesThenPatch struct {
	w     io.Writer
	need  int    // the name list's length; -1 until its line is read
	head  []byte // what came before the patch, until it is complete
	names []byte
	done  bool
}

func (s *namesThenPatch) Write(p []byte) (int, error) {
	if s.done {
		return s.w.Write(p)
	}
	s.head = append(s.head, p...)
	if s.need < 0 {
		i := bytes.IndexByte(s.head, '\n')
		if i < 0 {
			if len(s.head) > 32 {
				return 0, fmt.Errorf("malformed export stream from the guest")
			}
			return len(p), nil
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(s.head[:i])))
		if err != nil || n < 0 {
			return 0, fmt.Errorf("malformed export stream from the guest: %q", s.head[:i])
		}
		s.need, s.head = n, s.head[i+1:]
	}
	if len(s.head) < s.need {
		return len(p), nil
	}
	s.names, s.done = s.head[:s.need], true
	rest := s.head[s.need:]
	s.head = nil
	if len(rest) > 0 {
		if _, err := s.w.Write(rest); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func cdWorkspace(guestPath string) string {
	return "set -e\ncd " + Quote(guestPath) + " 2>/dev/null && [ -d .git ] || { echo " + Quote("no workspace at "+guestPath+" in the guest") + " >&2; exit " + fmt.Sprint(codeNoWorkspace) + "; }\n"
}

// Bundle writes to w a git bundle of the guest's HEAD with the commits made
// since base (the host's commit the workspace started from), for the host
// to fetch. No new commit is failed_precondition.
func Bundle(ctx context.Context, g Guest, guestPath, base string, w io.Writer) error {
	if err := ValidGuestPath(guestPath); err != nil {
		return err
	}
	if !ValidCommit(base) {
		return fmt.Errorf("base %q: want a commit id: %w", base, api.ErrBadRequest)
	}
	script := cdWorkspace(guestPath) +
		"git cat-file -e " + base + "^{commit} 2>/dev/null || { echo " + Quote("base "+base+" is not in the guest's repository") + " >&2; exit " + fmt.Sprint(codeBadBase) + "; }\n" +
		"n=$(git rev-list --count HEAD ^" + base + ")\n" +
		"[ \"$n\" -gt 0 ] || { echo 'no commit was made in the guest since the workspace was prepared' >&2; exit " + fmt.Sprint(codeNoCommits) + "; }\n" +
		"git bundle create -q - HEAD ^" + base + "\n"
	return run(ctx, g, "bundle the guest's commits", script, nil, w)
}
