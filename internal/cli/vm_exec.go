package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"golang.org/x/term"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/api/client"
	"github.com/kilnvm/kiln/internal/guest"
	"github.com/kilnvm/kiln/internal/system"
	"github.com/kilnvm/kiln/internal/workspace"
)

// daemonDialer opens streams to a VM's agent through the daemon socket.
type daemonDialer struct {
	c    *client.Client
	name string
}

func (d daemonDialer) Open(ctx context.Context) (net.Conn, error) { return d.c.Connect(ctx, d.name) }

// guestClient is an SSH client of the VM's agent, tunnelled through the
// daemon, authenticated with the VM's key and pinned to its host key.
func (e *env) guestClient(ctx context.Context, c *client.Client, name string) (*guest.Client, error) {
	creds, err := c.SSHCredentials(ctx, name)
	if err != nil {
		return nil, err
	}
	hostPub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(creds.HostPublicKey))
	if err != nil {
		return nil, fmt.Errorf("vm %s host key: %w", name, err)
	}
	signer, err := ssh.ParsePrivateKey([]byte(creds.ClientKey))
	if err != nil {
		return nil, fmt.Errorf("vm %s client key: %w", name, err)
	}
	return guest.NewClient(daemonDialer{c, name}, hostPub, signer), nil
}

// shellCommand joins argv for the guest's /bin/sh -c. One argument is
// passed as it is (like ssh), so `-- 'echo $HOME'` expands in the guest.
func shellCommand(args []string) string {
	if len(args) == 1 {
		return args[0]
	}
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

type execFlags struct {
	tty, interactive bool
	env              []string
	workdir          string // run in this guest directory (vm exec: the workspace's by default)
}

func (f *execFlags) bind(cmd *cobra.Command) {
	cmd.Flags().BoolVarP(&f.tty, "tty", "t", false, "allocate a terminal (default: when stdin and stdout are terminals and no command is given)")
	cmd.Flags().BoolVarP(&f.interactive, "interactive", "i", false, "forward stdin even when it is a terminal")
	cmd.Flags().StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable (KEY=VALUE) for the command")
	cmd.Flags().StringVarP(&f.workdir, "workdir", "w", "", "run in this guest directory (default: the VM's workspace, if any)")
}

func isTerminal(f any) bool {
	file, ok := f.(*os.File)
	return ok && term.IsTerminal(int(file.Fd()))
}

// runInGuest runs command (or a login shell when empty) in a VM and returns
// the guest's exit code.
func (e *env) runInGuest(ctx context.Context, c *client.Client, name string, command string, f execFlags) (int, error) {
	gc, err := e.guestClient(ctx, c, name)
	if err != nil {
		return 0, err
	}
	defer gc.Close()
	req := guest.ExecRequest{Command: command, Stdout: e.stdout, Stderr: e.stderr}
	if f.workdir != "" {
		req.Command = inDir(f.workdir, command)
	}
	for _, kv := range f.env {
		if !strings.Contains(kv, "=") {
			return 0, api.Errorf(api.ErrBadRequest, "--env %q: want KEY=VALUE", kv)
		}
		req.Env = append(req.Env, kv)
	}
	stdinTTY := isTerminal(e.stdin)
	wantTTY := f.tty || (command == "" && stdinTTY && isTerminal(e.stdout))
	if !stdinTTY || f.interactive || wantTTY {
		req.Stdin = e.stdin
	}
	if wantTTY && stdinTTY {
		in := e.stdin.(*os.File)
		cols, rows, err := term.GetSize(int(in.Fd()))
		if err != nil {
			cols, rows = 80, 24
		}
		t := os.Getenv("TERM")
		if t == "" {
			t = "xterm-256color"
		}
		req.PTY = &guest.PTY{Term: t, Rows: rows, Cols: cols}
		old, err := term.MakeRaw(int(in.Fd()))
		if err != nil {
			return 0, fmt.Errorf("put the terminal in raw mode: %w", err)
		}
		defer term.Restore(int(in.Fd()), old)
		resize := make(chan guest.WinSize, 1)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if c, r, err := term.GetSize(int(in.Fd())); err == nil {
					select {
					case resize <- guest.WinSize{Rows: r, Cols: c}:
					default:
					}
				}
			}
		}()
		req.Resize = resize
	} else if wantTTY {
		req.PTY = &guest.PTY{Term: "xterm-256color", Rows: 24, Cols: 80}
	}
	return gc.Exec(ctx, req)
}

func newVMExecCmd(e *env) *cobra.Command {
	var f execFlags
	cmd := &cobra.Command{
		Use:   "exec VM -- COMMAND [ARG...]",
		Short: "Run a command in a running VM and exit with its code",
		Long:  "Run a command in a running VM. stdin (when it is not a terminal, or with -i), stdout and stderr are streamed, and kiln exits with the command's exit code.",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			if !cmd.Flags().Changed("workdir") {
				if vm, err := c.GetVM(cmd.Context(), args[0]); err == nil && vm.Workspace != nil {
					f.workdir = vm.Workspace.GuestPath
				}
			}
			code, err := e.runInGuest(cmd.Context(), c, args[0], shellCommand(args[1:]), f)
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code}
			}
			return nil
		},
	}
	f.bind(cmd)
	return cmd
}

func newVMSSHCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ssh VM [-- COMMAND]",
		Short: "Open an interactive shell in a running VM",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			f := execFlags{tty: isTerminal(e.stdin), interactive: true}
			code, err := e.runInGuest(cmd.Context(), c, args[0], shellCommand(args[1:]), f)
			if err != nil {
				return err
			}
			if isTerminal(e.stdout) {
				fmt.Fprintln(e.stderr, e.dim(fmt.Sprintf("vm %s is still running; `kiln vm stop %s` stops it", args[0], args[0])))
			}
			if code != 0 {
				return &exitError{code}
			}
			return nil
		},
	}
	return cmd
}

func newVMRunCmd(e *env) *cobra.Command {
	var (
		cf         createFlags
		f          execFlags
		pf         prepareFlags
		rm, detach bool
	)
	cmd := &cobra.Command{
		Use:   "run [--name N] [--image I] [--rm] [-d] [PATH] [-- COMMAND...]",
		Short: "Create a VM, then open a shell in it or run a command",
		Long: "Create and boot a VM, then open a shell in it, or run COMMAND in it and exit with its code.\n" +
			"With --rm the VM is deleted afterwards; with -d it is left running and its name printed.\n" +
			"With PATH (a git repository, before --), the repository is first copied into the VM as its workspace\n" +
			"(see `kiln vm workspace prepare`) and COMMAND runs there.",
		RunE: func(cmd *cobra.Command, args []string) error {
			if detach && rm {
				return api.Errorf(api.ErrBadRequest, "--rm and -d do not go together")
			}
			path := ""
			if dash := cmd.ArgsLenAtDash(); dash > 0 {
				if dash > 1 {
					return api.Errorf(api.ErrBadRequest, "one PATH before --, got %q", args[:dash])
				}
				path, args = args[0], args[1:]
			} else if dash < 0 && len(args) == 1 && isDir(args[0]) {
				path, args = args[0], nil
			}
			req, err := cf.request()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			c, err := e.client(ctx)
			if err != nil {
				return err
			}
			if path != "" {
				if _, err := workspace.Inspect(ctx, system.ExecRunner{}, path); err != nil {
					return err // before creating anything
				}
			}
			vm, err := e.createVM(ctx, c, req)
			if err != nil {
				return err
			}
			if rm {
				defer func() {
					dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
					defer cancel()
					if err := c.DeleteVM(dctx, vm.Name); err != nil {
						e.printError(fmt.Errorf("delete vm %s: %w", vm.Name, err))
					}
				}()
			}
			if path != "" {
				if _, err := e.prepareWorkspace(ctx, c, vm.Name, path, pf, false); err != nil {
					return err
				}
				if !cmd.Flags().Changed("workdir") {
					f.workdir = pf.guestPath
				}
			}
			if detach {
				if e.jsonOut {
					return e.printJSON(vm)
				}
				fmt.Fprintln(e.stdout, vm.Name)
				return nil
			}
			command := ""
			if len(args) > 0 {
				command = shellCommand(args)
			} else {
				f.interactive = true
			}
			code, err := e.runInGuest(ctx, c, vm.Name, command, f)
			if err != nil {
				return err
			}
			if !rm && command == "" && isTerminal(e.stdout) {
				fmt.Fprintln(e.stderr, e.dim(fmt.Sprintf("vm %s is still running; `kiln vm delete %s` removes it", vm.Name, vm.Name)))
			}
			if code != 0 {
				return &exitError{code}
			}
			return nil
		},
	}
	cf.bind(cmd)
	f.bind(cmd)
	pf.bind(cmd)
	cmd.Flags().BoolVar(&rm, "rm", false, "delete the VM when the command or shell ends")
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "leave the VM running and print its name")
	return cmd
}

func newVMProxyCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:    "proxy VM",
		Short:  "Connect stdin/stdout to the VM agent's SSH server (for ssh ProxyCommand)",
		Args:   cobra.ExactArgs(1),
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			conn, err := c.Connect(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer conn.Close()
			done := make(chan struct{})
			go func() {
				_, _ = io.Copy(conn, e.stdin)
				if cw, ok := conn.(interface{ CloseWrite() error }); ok {
					_ = cw.CloseWrite()
				}
			}()
			go func() {
				_, _ = io.Copy(e.stdout, conn)
				close(done)
			}()
			<-done
			return nil
		},
	}
}
