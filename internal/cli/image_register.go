package cli

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kilnvm/kiln/internal/api"
)

func newImageRegisterCmd(e *env) *cobra.Command {
	var req api.RegisterImageRequest
	cmd := &cobra.Command{
		Use:   "register --name N --rootfs PATH [--kernel K]",
		Short: "Record an ext4 file on the host as an image, without copying it",
		Long: "Record the ext4 root filesystem PATH as the image N. kiln neither copies, writes\n" +
			"nor deletes PATH (`image rm` forgets it); each VM gets its own copy-on-write clone\n" +
			"at creation. No agent is injected: the agent stays PID 1 in its VMs.\n" +
			"`kiln image promote N` copies it into kiln's storage.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := api.ValidateName("image", req.Name); err != nil {
				return err
			}
			if req.RootFS == "" {
				return api.Errorf(api.ErrBadRequest, "--rootfs is required")
			}
			abs, err := filepath.Abs(req.RootFS)
			if err != nil {
				return fmt.Errorf("rootfs %s: %w", req.RootFS, err)
			}
			req.RootFS = abs
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			i, err := c.RegisterImage(cmd.Context(), req)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(i)
			}
			fmt.Fprintf(e.stdout, "image %s: %s ext4, unmanaged (%s)\n", i.Name, humanSize(i.Size), i.Unmanaged)
			return nil
		},
	}
	cmd.Flags().StringVar(&req.Name, "name", "", "image name")
	cmd.Flags().StringVar(&req.RootFS, "rootfs", "", "the ext4 file to register")
	cmd.Flags().StringVar(&req.Kernel, "kernel", "", "kernel VMs of this image boot by default")
	return cmd
}

func newImagePromoteCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "promote NAME",
		Short: "Copy a registered image's root filesystem into kiln's storage",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			if _, err := c.PromoteImage(cmd.Context(), args[0]); err != nil {
				return err
			}
			return e.showImage(cmd, args[0])
		},
	}
}
