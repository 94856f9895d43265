// Package cli implements the kiln command line: one file per command
// group, human output on a TTY, --json everywhere, and exit codes from
// error classes (vm exec and vm run exit with the guest command's code).
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/api/client"
	"github.com/kilnvm/kiln/internal/config"
)

// env is what every command gets: streams, flags and, lazily, a client.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	configPath     string
	socket         string
	jsonOut        bool
	cfg            *config.Config
}

// exitError carries an exit code without a message (the guest's own code).
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// Main runs the CLI and returns the process exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRootCmd(e)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	e.printError(err)
	if c := api.ClassOf(err); c != api.ClassInternal || isAPIError(err) {
		return c.ExitCode()
	}
	return 1
}

func isAPIError(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae)
}

func (e *env) printError(err error) {
	var ae *api.Error
	msg, hint, class, op := err.Error(), api.HintOf(err), "", ""
	if errors.As(err, &ae) {
		class, op = string(ae.Class), ae.OpID
	} else if c := api.ClassOf(err); c != api.ClassInternal {
		class = string(c)
	}
	if class != "" {
		fmt.Fprintf(e.stderr, "kiln: %s: %s\n", class, msg)
	} else {
		fmt.Fprintf(e.stderr, "kiln: %s\n", msg)
	}
	if hint != "" {
		fmt.Fprintf(e.stderr, "hint: %s\n", hint)
	}
	if op != "" {
		fmt.Fprintf(e.stderr, "%s\n", e.dim("op_id "+op))
	}
}

func newRootCmd(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:           "kiln",
		Short:         "Isolated Linux sandboxes as microVMs, as easily as docker run",
		Long:          "kiln gives you disposable or long-lived Linux development sandboxes as microVMs on your own machine.\n\n  kiln vm run                       boot a VM from the default image and open a shell\n  kiln vm run -- make test          run a command in a fresh VM, exit with its code\n  kiln vm exec box -- uname -a      run a command in a running VM",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version(),
	}
	root.PersistentFlags().StringVar(&e.configPath, "config", "", "configuration file (default "+config.DefaultPath+")")
	root.PersistentFlags().StringVar(&e.socket, "socket", "", "daemon API socket (default from the configuration)")
	root.PersistentFlags().BoolVar(&e.jsonOut, "json", false, "print machine-readable JSON")
	root.AddGroup(&cobra.Group{ID: "basic", Title: "Basic commands:"}, &cobra.Group{ID: "manage", Title: "Managing kiln:"})
	for _, c := range []*cobra.Command{newVMCmd(e), newImageCmd(e), newKernelCmd(e)} {
		c.GroupID = "basic"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{newDaemonCmd(e), newDoctorCmd(e), newOpsCmd(e), newVersionCmd(e)} {
		c.GroupID = "manage"
		root.AddCommand(c)
	}
	return root
}

// config loads the configuration once.
func (e *env) config() (config.Config, error) {
	if e.cfg != nil {
		return *e.cfg, nil
	}
	cfg, err := config.Load(e.configPath, os.Environ())
	if err != nil {
		return cfg, err
	}
	if e.socket != "" {
		cfg.Socket = e.socket
	}
	e.cfg = &cfg
	return cfg, nil
}

// client returns a client of a daemon that answers, starting the daemon in
// the background first when none does and the caller is root.
func (e *env) client(ctx context.Context) (*client.Client, error) {
	cfg, err := e.config()
	if err != nil {
		return nil, err
	}
	c := client.New(cfg.SocketPath())
	if _, err := c.Version(ctx); err == nil {
		return c, nil
	} else if !errors.Is(err, api.ErrUnavailable) {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, api.Hinted(fmt.Errorf("kiln daemon is not running (no answer on %s): %w", cfg.SocketPath(), api.ErrUnavailable),
			"ask root to start it (`sudo kiln daemon`, or any kiln command run as root starts it), and to add you to the kiln group")
	}
	if err := startDaemon(ctx, e, cfg); err != nil {
		return nil, err
	}
	return c, nil
}

func (e *env) isTTY() bool {
	f, ok := e.stdout.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (e *env) dim(s string) string {
	if !e.isTTY() || os.Getenv("NO_COLOR") != "" {
		return s
	}
	return "\x1b[2m" + s + "\x1b[0m"
}

func (e *env) printJSON(v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func version() string {
	return daemonVersion()
}
