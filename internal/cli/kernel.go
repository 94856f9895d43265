package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kilnvm/kiln/internal/api"
)

func newKernelCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "kernel", Short: "Import, pull and manage guest kernels"}
	var imp api.ImportKernelRequest
	importCmd := &cobra.Command{
		Use:   "import NAME (--deb FILE | --vmlinuz FILE --modules DIR | --from-host)",
		Short: "Import a kernel; kiln builds its initramfs (agent + needed modules)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			imp.Name = args[0]
			if err := api.ValidateName("kernel", imp.Name); err != nil {
				return err
			}
			for _, p := range []*string{&imp.Deb, &imp.Vmlinuz, &imp.ModulesDir} {
				if *p == "" {
					continue
				}
				abs, err := filepath.Abs(*p)
				if err != nil {
					return err
				}
				if _, err := os.Stat(abs); err != nil {
					return fmt.Errorf("%s: %w", abs, api.ErrBadRequest)
				}
				*p = abs
			}
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			op, err := c.ImportKernel(cmd.Context(), imp)
			if err != nil {
				return err
			}
			return e.finishKernelOp(cmd, op)
		},
	}
	importCmd.Flags().StringVar(&imp.Deb, "deb", "", "a linux-image .deb package")
	importCmd.Flags().StringVar(&imp.Vmlinuz, "vmlinuz", "", "a kernel image (bzImage or ELF vmlinux)")
	importCmd.Flags().StringVar(&imp.ModulesDir, "modules", "", "its modules directory (lib/modules/RELEASE)")
	importCmd.Flags().BoolVar(&imp.FromHost, "from-host", false, "the host's running kernel and its modules")

	pullCmd := &cobra.Command{
		Use:   "pull DISTRO [--name NAME]",
		Short: "Download a distribution kernel through the host's package manager (debian)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, _ := cmd.Flags().GetString("name")
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			op, err := c.PullKernel(cmd.Context(), api.PullKernelRequest{Name: name, Distro: args[0]})
			if err != nil {
				return err
			}
			return e.finishKernelOp(cmd, op)
		},
	}
	pullCmd.Flags().String("name", "", "kernel name (default: the distro)")

	listCmd := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List kernels", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			ks, err := c.ListKernels(cmd.Context())
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(ks)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tRELEASE\tFORMAT\tMODULES\tSOURCE\tCREATED")
			for _, k := range ks {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", k.Name, k.Release, k.Format, len(k.Modules), k.Source, ago(k.CreatedAt))
			}
			return tw.Flush()
		},
	}
	showCmd := &cobra.Command{
		Use: "show NAME", Short: "Show a kernel", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			k, err := c.GetKernel(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return e.printJSON(k)
		},
	}
	rmCmd := &cobra.Command{
		Use: "rm NAME...", Aliases: []string{"delete"}, Short: "Remove kernels (refused while a VM uses one)", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			return e.forEachVM(cmd.Context(), args, c.DeleteKernel)
		},
	}
	cmd.AddCommand(importCmd, pullCmd, listCmd, showCmd, rmCmd)
	return cmd
}

func (e *env) finishKernelOp(cmd *cobra.Command, op api.Operation) error {
	c, err := e.client(cmd.Context())
	if err != nil {
		return err
	}
	final, err := e.follow(cmd.Context(), c, op)
	if err != nil {
		return err
	}
	k, err := c.GetKernel(cmd.Context(), final.Target)
	if err != nil {
		return err
	}
	if e.jsonOut {
		return e.printJSON(k)
	}
	fmt.Fprintf(e.stdout, "kernel %s: linux %s (%s), %d modules in its initramfs\n", k.Name, k.Release, k.Format, len(k.Modules))
	return nil
}
