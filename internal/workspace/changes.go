package workspace

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kilnvm/kiln/internal/system"
)

// Changes says how the work tree to copy differs from the commit it is
// based on. Prepare checks the commit's tree out in the guest from the
// pack it sends anyway and copies only these paths from disk, so a clean
// repository costs one pack, not a pack and a tar of every file.
type Changes struct {
	// Copy are the paths copied as they are on disk: tracked files whose
	// state on disk differs from the commit — content, executable bit,
	// file/symlink — and the untracked files asked for. A path listed
	// here that is gone from disk is absent in the guest. Listing more
	// paths than changed is correct, only slower.
	Copy []string `json:"copy"`
	// Remove are the commit's paths the copy leaves out: no longer
	// tracked (`git rm --cached`), or no longer a file or symlink.
	Remove []string `json:"remove,omitempty"`
}

// ListChanges compares the work tree at root, as on disk, with commit:
// `git diff --name-only HEAD` lists what differs (a file staged and edited
// again counts as it is on disk), `git diff --cached --diff-filter=D` what
// left the index, and with includeUntracked `git ls-files --others
// --exclude-standard` the untracked files no ignore rule covers. Tracked
// files with a filter or ident attribute, or marked assume-unchanged or
// skip-worktree, are always copied. Ignored files are never listed.
func ListChanges(ctx context.Context, r system.Runner, root, commit string, includeUntracked bool) (Changes, error) {
	if !ValidCommit(commit) {
		return Changes{}, fmt.Errorf("list the changes of %s: %q is not a commit id", root, commit)
	}
	names := func(what string, args ...string) ([]string, error) {
		out, err := r.Run(ctx, system.Cmd{Name: "git", Args: append([]string{"-C", root}, args...)})
		if err != nil {
			return nil, fmt.Errorf("list the %s of %s: %w", what, root, err)
		}
		var ps []string
		for _, p := range bytes.Split(out, []byte{0}) {
			// A nested repository shows up as "dir/" among untracked files.
			if len(p) > 0 && p[len(p)-1] != '/' {
				ps = append(ps, string(p))
			}
		}
		return ps, nil
	}
	diff := []string{"diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", "--ignore-submodules=all"}
	changed, err := names("changes since "+commit, append(diff, commit, "--")...)
	if err != nil {
		return Changes{}, err
	}
	untracked := map[string]bool{}
	gone, err := names("files removed from the index", append(diff, "--cached", "--diff-filter=D", commit, "--")...)
	if err != nil {
		return Changes{}, err
	}
	for _, p := range gone {
		untracked[p] = true
	}
	// A checkout in the guest, which has none of the host's filter drivers
	// (Git LFS…), would not reproduce these files: they are copied.
	filtered, err := names("filtered files", "ls-files", "-z", "--", ".", ":(exclude,attr:!filter !ident)")
	if err != nil {
		return Changes{}, err
	}
	others := filtered
	// `git diff` trusts entries marked assume-unchanged or skip-worktree
	// (sparse checkouts): they are copied as on disk (or left out).
	tagged, err := names("index flags", "ls-files", "-z", "-v")
	if err != nil {
		return Changes{}, err
	}
	for _, rec := range tagged {
		if len(rec) > 2 && rec[1] == ' ' && (rec[0] == 'S' || rec[0] >= 'a' && rec[0] <= 'z') {
			others = append(others, rec[2:])
		}
	}
	if includeUntracked {
		untr, err := names("untracked files", "ls-files", "-z", "--others", "--exclude-standard")
		if err != nil {
			return Changes{}, err
		}
		others = append(others, untr...)
	}
	var ch Changes
	seen := map[string]bool{}
	add := func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil || !(fi.Mode().IsRegular() || fi.Mode()&os.ModeSymlink != 0) {
			if os.IsNotExist(err) {
				// Deleted on disk: WriteTar counts it as missing.
				ch.Copy = append(ch.Copy, p)
				return
			}
			ch.Remove = append(ch.Remove, p)
			return
		}
		ch.Copy = append(ch.Copy, p)
	}
	for _, p := range others {
		add(p)
	}
	for _, p := range changed {
		if untracked[p] {
			if !seen[p] {
				seen[p] = true
				ch.Remove = append(ch.Remove, p)
			}
			continue
		}
		add(p)
	}
	return ch, nil
}
