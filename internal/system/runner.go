// Package system runs host commands through one small interface, so tests
// can observe and fail them and errors always carry the command's stderr.
package system

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
)

// Cmd is one command to run.
type Cmd struct {
	Name  string
	Args  []string
	Dir   string
	Env   []string // added to the daemon's environment
	Stdin io.Reader
}

func (c Cmd) String() string { return strings.Join(append([]string{c.Name}, c.Args...), " ") }

// Runner runs commands. Implementations must be safe for concurrent use.
type Runner interface {
	// Run runs c and returns its standard output. A non-zero exit is an
	// error that names the command and carries the tail of its stderr.
	Run(ctx context.Context, c Cmd) ([]byte, error)
}

// Command is a convenience for Runner.Run with no stdin, dir or env.
func Command(ctx context.Context, r Runner, name string, args ...string) ([]byte, error) {
	return r.Run(ctx, Cmd{Name: name, Args: args})
}

// ExecRunner runs commands with os/exec.
type ExecRunner struct{}

// Run implements Runner.
func (ExecRunner) Run(ctx context.Context, c Cmd) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.Name, c.Args...)
	cmd.Dir = c.Dir
	if len(c.Env) > 0 {
		cmd.Env = append(cmd.Environ(), c.Env...)
	}
	cmd.Stdin = c.Stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = "..." + msg[len(msg)-2000:]
		}
		if msg != "" {
			return stdout.Bytes(), fmt.Errorf("%s: %w: %s", c.Name, err, msg)
		}
		return stdout.Bytes(), fmt.Errorf("%s: %w", c.Name, err)
	}
	return stdout.Bytes(), nil
}
