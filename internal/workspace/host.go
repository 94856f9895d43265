package workspace

import (
	"context"
	"fmt"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/system"
)

// CheckApplies reports whether the patch in file applies to the host work
// tree at root (`git apply --check`); when it does not, the error is of
// class conflict and quotes git.
func CheckApplies(ctx context.Context, r system.Runner, root, file string) error {
	if _, err := r.Run(ctx, system.Cmd{Name: "git", Args: []string{"-C", root, "apply", "--check", file}}); err != nil {
		return api.Hinted(fmt.Errorf("the host repository %s moved on: the guest's changes do not apply to it: %v: %w", root, err, api.ErrConflict),
			"write the patch anyway with --no-check (then `git apply -3`), or export the guest's commits with --branch NAME and merge")
	}
	return nil
}

// FetchBundle fetches the HEAD of the bundle in file into a new branch of
// the host repository at root and returns the commits it brought
// (`git log --oneline`). An existing branch is already_exists.
func FetchBundle(ctx context.Context, r system.Runner, root, file, branch string) ([]string, error) {
	if err := ValidateBranch(ctx, r, branch); err != nil {
		return nil, err
	}
	if _, err := git(ctx, r, root, "show-ref", "--verify", "-q", "refs/heads/"+branch); err == nil {
		return nil, fmt.Errorf("branch %q exists in %s: %w", branch, root, api.ErrAlreadyExists)
	}
	if _, err := git(ctx, r, root, "bundle", "verify", "-q", file); err != nil {
		return nil, fmt.Errorf("the guest's bundle does not fit the host repository %s (is its base commit there?): %v: %w", root, err, api.ErrConflict)
	}
	if _, err := git(ctx, r, root, "fetch", "-q", file, "HEAD:refs/heads/"+branch); err != nil {
		return nil, fmt.Errorf("fetch the guest's commits into branch %s: %w", branch, err)
	}
	out, err := git(ctx, r, root, "log", "--oneline", "--no-decorate", "refs/heads/"+branch, "--not", "--exclude="+branch, "--branches", "--tags", "--remotes")
	if err != nil {
		return nil, fmt.Errorf("list the fetched commits: %w", err)
	}
	if out == "" {
		return nil, nil
	}
	return strings.Split(out, "\n"), nil
}
