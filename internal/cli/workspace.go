package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/api/client"
	"github.com/kilnvm/kiln/internal/system"
	"github.com/kilnvm/kiln/internal/workspace"
)

// DefaultGuestPath is where a workspace goes in the guest by default.
const DefaultGuestPath = "/root/repo"

// The CLI does the git work of workspaces on the host (a "smart client")
// and streams through the agent's exec; the daemon only records where the
// workspace is (PUT /v1/vms/NAME/workspace).

type prepareFlags struct {
	guestPath        string
	includeUntracked bool
	fullCopy         bool
	branch, from     string
}

func (f *prepareFlags) bind(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.guestPath, "guest-path", DefaultGuestPath, "directory of the workspace in the guest (absent or empty)")
	cmd.Flags().BoolVar(&f.includeUntracked, "include-untracked", false, "also copy untracked files that no .gitignore rule covers (ignored files are never copied)")
	cmd.Flags().BoolVar(&f.fullCopy, "full-copy", false, "copy the whole directory: .git with all history, ignored files and submodules")
}

// prepareWorkspace copies the repository at path into a running VM and
// records it on the VM.
func (e *env) prepareWorkspace(ctx context.Context, c *client.Client, vmName, path string, f prepareFlags, dryRun bool) (workspace.Prepared, error) {
	r := system.ExecRunner{}
	if err := workspace.ValidGuestPath(f.guestPath); err != nil {
		return workspace.Prepared{}, err
	}
	if f.from != "" && f.branch == "" {
		return workspace.Prepared{}, api.Errorf(api.ErrBadRequest, "--from needs --branch")
	}
	if f.from != "" && (f.fullCopy || f.includeUntracked) {
		return workspace.Prepared{}, api.Errorf(api.ErrBadRequest, "--from checks out a commit: it goes with neither --full-copy nor --include-untracked")
	}
	repo, err := workspace.Inspect(ctx, r, path)
	if err != nil {
		return workspace.Prepared{}, err
	}
	opts := workspace.PrepareOptions{GuestPath: f.guestPath, IncludeUntracked: f.includeUntracked, Branch: f.branch, FullCopy: f.fullCopy}
	if f.branch != "" {
		if err := workspace.ValidateBranch(ctx, r, f.branch); err != nil {
			return workspace.Prepared{}, err
		}
	}
	if f.from != "" {
		if opts.From, err = workspace.ResolveCommit(ctx, r, repo.Root, f.from); err != nil {
			return workspace.Prepared{}, err
		}
	}
	var files []string
	var changes workspace.Changes
	if !f.fullCopy && f.from == "" {
		if dryRun {
			files, err = workspace.ListFiles(ctx, r, repo.Root, f.includeUntracked)
		} else {
			changes, err = workspace.ListChanges(ctx, r, repo.Root, repo.Head, f.includeUntracked)
		}
		if err != nil {
			return workspace.Prepared{}, err
		}
	}
	if _, err := c.GetVM(ctx, vmName); err != nil {
		return workspace.Prepared{}, err
	}
	if dryRun {
		if len(repo.Submodules) > 0 && !f.fullCopy {
			return workspace.Prepared{}, api.Hinted(api.Errorf(api.ErrFailedPrecondition, "repository %s has submodules %v", repo.Root, repo.Submodules), "--full-copy copies them")
		}
		return workspace.Prepared{GuestPath: f.guestPath, Head: repo.Head, Branch: repo.Branch, Copy: workspace.CopyStats{Files: len(files)}}, e.printPlan(repo, files, f)
	}
	gc, err := e.guestClient(ctx, c, vmName)
	if err != nil {
		return workspace.Prepared{}, err
	}
	defer gc.Close()
	start := time.Now()
	p, err := workspace.Prepare(ctx, gc, repo, changes, opts)
	if err != nil {
		return p, fmt.Errorf("prepare the workspace of vm %s: %w", vmName, err)
	}
	if _, err := c.SetWorkspace(ctx, vmName, api.Workspace{HostPath: repo.Root, GuestPath: p.GuestPath, HeadCommit: p.Head, Branch: p.Branch}); err != nil {
		return p, err
	}
	if !e.jsonOut {
		fmt.Fprintf(e.stderr, "workspace %s → %s:%s (%d files from the history, %d copied from disk, %s, branch %s at %.12s) %s\n", repo.Root, vmName, p.GuestPath,
			p.Copy.CheckedOut, p.Copy.Files, humanBytes(p.Copy.Bytes), p.Branch, p.Head, e.dim(fmtDur(time.Since(start))))
	}
	return p, nil
}

func (e *env) printPlan(repo workspace.Repo, files []string, f prepareFlags) error {
	var size int64
	for _, rel := range files {
		if fi, err := os.Lstat(filepath.Join(repo.Root, rel)); err == nil && fi.Mode().IsRegular() {
			size += fi.Size()
		}
	}
	plan := map[string]any{"repo": repo, "guest_path": f.guestPath, "files": len(files), "bytes": size, "full_copy": f.fullCopy, "from": f.from}
	if e.jsonOut {
		return e.printJSON(plan)
	}
	fmt.Fprintf(e.stdout, "repository:  %s\nhead:        %s (branch %q)\nidentity:    %s <%s>\nguest path:  %s\n",
		repo.Root, repo.Head, repo.Branch, repo.UserName, repo.UserEmail, f.guestPath)
	switch {
	case f.fullCopy:
		fmt.Fprintf(e.stdout, "copy:        the whole directory (full copy)\n")
	case f.from != "":
		fmt.Fprintf(e.stdout, "copy:        the tree of %s on branch %s\n", f.from, f.branch)
	default:
		fmt.Fprintf(e.stdout, "copy:        %d files, %s\n", len(files), humanBytes(size))
	}
	return nil
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func newVMWorkspaceCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "workspace", Aliases: []string{"ws"}, Short: "Copy a git repository into a VM and bring the changes back"}
	cmd.AddCommand(newWorkspacePrepareCmd(e), newWorkspaceExportCmd(e))
	return cmd
}

func newWorkspacePrepareCmd(e *env) *cobra.Command {
	var (
		f      prepareFlags
		dryRun bool
	)
	cmd := &cobra.Command{
		Use:   "prepare VM PATH",
		Short: "Copy the git repository at PATH into a running VM",
		Long: "Copy the git repository holding PATH into a running VM: its tracked files as they are on disk (uncommitted changes\n" +
			"included; untracked ones with --include-untracked; ignored ones never) with a one-commit history, so commits can be\n" +
			"made in the guest, and the host's git identity. `kiln vm exec` then runs in the workspace directory.\n" +
			"The guest needs git. Submodules are refused unless --full-copy.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			p, err := e.prepareWorkspace(cmd.Context(), c, args[0], args[1], f, dryRun)
			if err != nil {
				return err
			}
			if e.jsonOut && !dryRun {
				return e.printJSON(p)
			}
			return nil
		},
	}
	f.bind(cmd)
	cmd.Flags().StringVar(&f.branch, "branch", "", "guest branch (default: the host's current branch)")
	cmd.Flags().StringVar(&f.from, "from", "", "with --branch: check out this commit's tree instead of copying the work tree")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "show what would be copied, and copy nothing")
	return cmd
}

func newWorkspaceExportCmd(e *env) *cobra.Command {
	var (
		base, output, branch string
		noCheck              bool
	)
	cmd := &cobra.Command{
		Use:   "export VM",
		Short: "Bring a workspace's changes back: a patch, or the guest's commits as a host branch",
		Long: "Write a binary-safe patch (git diff --binary) of everything changed in the VM's workspace since it was prepared —\n" +
			"commits made in the guest and uncommitted changes alike — to stdout or --output, and list the changed files on stderr.\n" +
			"The guest's index is left untouched. The patch is checked against the host repository first: if the host moved on\n" +
			"so that it no longer applies, kiln says so (exit 13) unless --no-check.\n" +
			"With --branch NAME, the commits made in the guest are fetched into a new host branch instead.\n" +
			"--base-commit C diffs against C (a commit in the guest, e.g. the host HEAD the workspace started from).\n" +
			"With --json (which needs --output, or --branch), stdout is {output, bytes, files: [{status, path}]}, or\n" +
			"{branch, commits, uncommitted} for --branch; --branch warns on stderr about uncommitted guest changes it leaves out.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if branch != "" && output != "" {
				return api.Errorf(api.ErrBadRequest, "--branch and --output do not go together")
			}
			if e.jsonOut && branch == "" && output == "" {
				return api.Hinted(api.Errorf(api.ErrBadRequest, "--json prints the list of changed files on stdout: the patch needs --output FILE"),
					"kiln vm workspace export VM --json --output changes.patch")
			}
			c, err := e.client(ctx)
			if err != nil {
				return err
			}
			vm, err := c.GetVM(ctx, args[0])
			if err != nil {
				return err
			}
			if vm.Workspace == nil {
				return api.Hinted(api.Errorf(api.ErrFailedPrecondition, "vm %s has no workspace", vm.Name), "`kiln vm workspace prepare "+vm.Name+" PATH` makes one")
			}
			ws := *vm.Workspace
			r := system.ExecRunner{}
			if branch != "" {
				if err := workspace.ValidateBranch(ctx, r, branch); err != nil {
					return err
				}
			}
			gc, err := e.guestClient(ctx, c, vm.Name)
			if err != nil {
				return err
			}
			defer gc.Close()
			tmp, err := os.CreateTemp("", "kiln-export-")
			if err != nil {
				return err
			}
			defer os.Remove(tmp.Name())
			defer tmp.Close()

			if branch != "" {
				b := base
				if b == "" {
					b = ws.HeadCommit
				}
				// The branch holds the guest's commits only: say what it leaves out.
				uncommitted, err := workspace.Uncommitted(ctx, gc, ws.GuestPath)
				if err != nil {
					return err
				}
				e.warnUncommitted(vm.Name, ws.GuestPath, branch, uncommitted)
				if err := workspace.Bundle(ctx, gc, ws.GuestPath, b, tmp); err != nil {
					return err
				}
				commits, err := workspace.FetchBundle(ctx, r, ws.HostPath, tmp.Name(), branch)
				if err != nil {
					return err
				}
				if e.jsonOut {
					if uncommitted == nil {
						uncommitted = []workspace.Change{}
					}
					return e.printJSON(map[string]any{"branch": branch, "commits": commits, "uncommitted": uncommitted})
				}
				fmt.Fprintf(e.stderr, "branch %s in %s: %d commit(s) from vm %s\n", branch, ws.HostPath, len(commits), vm.Name)
				for _, l := range commits {
					fmt.Fprintln(e.stdout, l)
				}
				return nil
			}

			changes, err := workspace.Patch(ctx, gc, ws.GuestPath, base, tmp)
			if err != nil {
				return err
			}
			if !e.jsonOut {
				for _, c := range changes {
					fmt.Fprintf(e.stderr, "%s\t%s\n", c.Status, c.Path)
				}
			}
			if !noCheck && base == "" {
				if fi, err := os.Stat(ws.HostPath); err == nil && fi.IsDir() {
					if st, _ := tmp.Stat(); st != nil && st.Size() > 0 {
						if err := workspace.CheckApplies(ctx, r, ws.HostPath, tmp.Name()); err != nil {
							return err
						}
					}
				}
			}
			if _, err := tmp.Seek(0, io.SeekStart); err != nil {
				return err
			}
			var out io.Writer = e.stdout
			if output != "" {
				of, err := os.Create(output)
				if err != nil {
					return fmt.Errorf("write the patch: %w", err)
				}
				defer of.Close()
				out = of
			}
			n, err := io.Copy(out, tmp)
			if err != nil {
				return fmt.Errorf("write the patch: %w", err)
			}
			if e.jsonOut {
				if changes == nil {
					changes = []workspace.Change{}
				}
				return e.printJSON(map[string]any{"output": output, "bytes": n, "files": changes})
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&base, "base-commit", "", "diff against this guest commit (default: the workspace as prepared)")
	cmd.Flags().StringVarP(&output, "output", "o", "", "write the patch to FILE instead of stdout")
	cmd.Flags().StringVar(&branch, "branch", "", "fetch the guest's commits into this new host branch instead of writing a patch")
	cmd.Flags().BoolVar(&noCheck, "no-check", false, "write the patch even if it does not apply to the host repository")
	return cmd
}

// warnUncommitted tells, on stderr, which uncommitted guest changes a
// branch export leaves out.
func (e *env) warnUncommitted(vmName, guestPath, branch string, changes []workspace.Change) {
	if len(changes) == 0 {
		return
	}
	fmt.Fprintf(e.stderr, "warning: %d uncommitted change(s) in %s:%s are not in branch %s (commit them in the guest, or export them as a patch: kiln vm workspace export %s):\n",
		len(changes), vmName, guestPath, branch, vmName)
	const most = 20
	for i, c := range changes {
		if i == most {
			fmt.Fprintf(e.stderr, "  ... and %d more\n", len(changes)-most)
			break
		}
		fmt.Fprintf(e.stderr, "  %s\t%s\n", c.Status, c.Path)
	}
}

// inDir makes command run in dir: a `cd` on its own line first (so any
// command text, comments included, stays intact), or, for no command, a
// login shell there.
func inDir(dir, command string) string {
	if command == "" {
		return "cd " + workspace.Quote(dir) + " && exec \"${SHELL:-/bin/sh}\" -l"
	}
	return "cd " + workspace.Quote(dir) + " || exit 1\n" + command
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
