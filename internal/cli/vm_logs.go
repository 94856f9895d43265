package cli

import (
	"github.com/spf13/cobra"

	"github.com/kilnvm/kiln/internal/api"
)

func newVMLogsCmd(e *env) *cobra.Command {
	var opts api.LogsOptions
	cmd := &cobra.Command{
		Use:   "logs VM",
		Short: "Print a VM's serial console log",
		Long: `Print a VM's serial console log: the kernel's and the agent's boot lines and
whatever the guest writes to /dev/console.

With -f the command keeps printing what the guest writes until interrupted
(Ctrl-C exits 0) or the VM is deleted (exit with a not_found error). It
follows across stop and start: a new boot starts a new log (QEMU truncates
it), and its output appears from its first line.`,
		Example: `  kiln vm logs box
  kiln vm logs -f --tail 20 box`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.Tail < -1 {
				return api.Errorf(api.ErrBadRequest, "--tail %d: want a number of lines >= 0", opts.Tail)
			}
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			return c.StreamVMLogs(cmd.Context(), args[0], opts, e.stdout)
		},
	}
	cmd.Flags().BoolVarP(&opts.Follow, "follow", "f", false, "keep printing what the guest writes until interrupted")
	cmd.Flags().IntVarP(&opts.Tail, "tail", "n", -1, "print only the last N lines first (-1: all)")
	return cmd
}
