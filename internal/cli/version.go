package cli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/api/client"
)

// versionReport is `kiln version --json`.
type versionReport struct {
	Client struct {
		Version string `json:"version"`
	} `json:"client"`
	Daemon *api.Version `json:"daemon,omitempty"` // nil: no daemon answered
}

func newVersionCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the client and daemon versions and the daemon's VMMs",
		Long:  "Print the kiln client version, then the running daemon's version, its default VMM and accelerator, and every VMM driver it knows: usable or not (with the reason), and its version. It does not start a daemon.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := e.config()
			if err != nil {
				return err
			}
			var rep versionReport
			rep.Client.Version = version()
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			v, derr := client.New(cfg.SocketPath()).Version(ctx)
			if derr == nil {
				rep.Daemon = &v
			}
			if e.jsonOut {
				if err := e.printJSON(rep); err != nil {
					return err
				}
			} else {
				printVersion(e.stdout, rep, cfg.SocketPath())
			}
			if derr != nil {
				return derr // says which socket, with a hint
			}
			return nil
		},
	}
}

// printVersion writes rep for people.
func printVersion(w io.Writer, rep versionReport, sock string) {
	fmt.Fprintf(w, "client: kiln %s\n", rep.Client.Version)
	v := rep.Daemon
	if v == nil {
		return
	}
	fmt.Fprintf(w, "daemon: kiln %s (pid %d) on %s, default vmm %s, accel %s\n", v.Version, v.PID, sock, v.VMM, v.Accel)
	if v.Note != "" {
		fmt.Fprintf(w, "        %s\n", v.Note)
	}
	if len(v.VMMs) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VMM\tUSABLE\tDEFAULT\tVERSION\tREASON")
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	for _, m := range v.VMMs {
		ver := m.Version
		if ver == "" {
			ver = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.Name, yes(m.Usable), yes(m.Default), ver, firstLineOf(m.Reason))
	}
	tw.Flush()
}

func firstLineOf(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}
