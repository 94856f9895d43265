// Package workspace moves a host git repository into a VM and its changes
// back. It runs on the client side (the CLI): it inspects the host
// repository with git, streams a shallow history and the repository's files
// (tracked, plus untracked non-ignored ones on request) straight into the
// guest through the agent's exec with stdin — never through a temporary
// copy on the host — and exports what changed in the guest as a binary-safe
// patch or as a host branch fetched from a bundle of the guest's commits.
package workspace

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/system"
)

// Repo is what Inspect learns about a host repository.
type Repo struct {
	Root      string `json:"root"`             // the work tree's top directory
	Head      string `json:"head"`             // HEAD's commit id
	Branch    string `json:"branch,omitempty"` // HEAD's branch; empty when detached
	UserName  string `json:"user_name,omitempty"`
	UserEmail string `json:"user_email,omitempty"`
	Origin    string `json:"origin,omitempty"` // remote.origin.url
	// Submodules are the paths of gitlinks in the index.
	Submodules []string `json:"submodules,omitempty"`
}

var commitRE = regexp.MustCompile(`^[0-9a-f]{40}([0-9a-f]{24})?$`)

// ValidCommit reports whether s is a full commit id (SHA-1 or SHA-256).
func ValidCommit(s string) bool { return commitRE.MatchString(s) }

// git runs git in dir and returns its trimmed output.
func git(ctx context.Context, r system.Runner, dir string, args ...string) (string, error) {
	out, err := r.Run(ctx, system.Cmd{Name: "git", Args: append([]string{"-C", dir}, args...)})
	return strings.TrimSpace(string(out)), err
}

// Inspect finds the repository holding path and describes it. A path
// outside any work tree fails with bad_request; a repository without a
// commit with failed_precondition.
func Inspect(ctx context.Context, r system.Runner, path string) (Repo, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return Repo{}, fmt.Errorf("workspace path %q: %w", path, api.ErrBadRequest)
	}
	root, err := git(ctx, r, abs, "rev-parse", "--show-toplevel")
	if err != nil || root == "" {
		return Repo{}, api.Hinted(fmt.Errorf("%s is not inside a git work tree: %w", abs, api.ErrBadRequest),
			"`git init` it, or pass the directory of a git repository")
	}
	repo := Repo{Root: root}
	repo.Head, err = git(ctx, r, root, "rev-parse", "--verify", "-q", "HEAD^{commit}")
	if err != nil || !ValidCommit(repo.Head) {
		return Repo{}, api.Hinted(fmt.Errorf("repository %s has no commit yet: %w", root, api.ErrFailedPrecondition),
			"commit something first: the workspace's history starts at HEAD")
	}
	if b, err := git(ctx, r, root, "symbolic-ref", "-q", "--short", "HEAD"); err == nil {
		repo.Branch = b
	}
	// `git config` exits 1 for an unset key: that is not an error here.
	repo.UserName, _ = git(ctx, r, root, "config", "user.name")
	repo.UserEmail, _ = git(ctx, r, root, "config", "user.email")
	repo.Origin, _ = git(ctx, r, root, "config", "remote.origin.url")
	out, err := r.Run(ctx, system.Cmd{Name: "git", Args: []string{"-C", root, "ls-files", "-z", "--stage"}})
	if err != nil {
		return Repo{}, fmt.Errorf("list the index of %s: %w", root, err)
	}
	for _, rec := range bytes.Split(out, []byte{0}) {
		// "<mode> <object> <stage>\t<path>"
		if bytes.HasPrefix(rec, []byte("160000 ")) {
			if i := bytes.IndexByte(rec, '\t'); i > 0 {
				repo.Submodules = append(repo.Submodules, string(rec[i+1:]))
			}
		}
	}
	return repo, nil
}

// ResolveCommit resolves ref to a commit id in the repository at root.
func ResolveCommit(ctx context.Context, r system.Runner, root, ref string) (string, error) {
	if strings.HasPrefix(ref, "-") || ref == "" {
		return "", fmt.Errorf("ref %q: %w", ref, api.ErrBadRequest)
	}
	c, err := git(ctx, r, root, "rev-parse", "--verify", "-q", ref+"^{commit}")
	if err != nil || !ValidCommit(c) {
		return "", fmt.Errorf("%q is not a commit in %s: %w", ref, root, api.ErrNotFound)
	}
	return c, nil
}

// ValidateBranch checks a branch name with git's own rules.
func ValidateBranch(ctx context.Context, r system.Runner, name string) error {
	if name == "" || strings.HasPrefix(name, "-") {
		return fmt.Errorf("branch name %q: %w", name, api.ErrBadRequest)
	}
	if _, err := r.Run(ctx, system.Cmd{Name: "git", Args: []string{"check-ref-format", "--branch", name}}); err != nil {
		return fmt.Errorf("branch name %q is not valid for git: %w", name, api.ErrBadRequest)
	}
	return nil
}
