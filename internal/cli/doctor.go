package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/kilnvm/kiln/internal/daemon"
)

func newDoctorCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check this host for what kiln needs, with a fix for each problem",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := e.config()
			if err != nil {
				return err
			}
			checks := daemon.Doctor(cmd.Context(), cfg)
			if e.jsonOut {
				return e.printJSON(checks)
			}
			failed := 0
			color := e.isTTY() && os.Getenv("NO_COLOR") == ""
			for _, c := range checks {
				label := c.Status
				if color {
					switch c.Status {
					case "pass":
						label = "\x1b[32mpass\x1b[0m"
					case "warn":
						label = "\x1b[33mwarn\x1b[0m"
					case "fail":
						label = "\x1b[31mfail\x1b[0m"
					}
				}
				fmt.Fprintf(e.stdout, "%-4s  %-22s %s\n", label, c.Name, c.Detail)
				if c.Fix != "" && c.Status != "pass" {
					fmt.Fprintf(e.stdout, "      %-22s fix: %s\n", "", c.Fix)
				}
				if c.Status == "fail" {
					failed++
				}
			}
			if failed > 0 {
				return &exitError{code: 1}
			}
			return nil
		},
	}
}
