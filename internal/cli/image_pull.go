package cli

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/api/client"
)

func newImagePullCmd(e *env) *cobra.Command {
	var req api.PullImageRequest
	cmd := &cobra.Command{
		Use:   "pull NAME|REF [--name N] [--kernel K] [--size S]",
		Short: "Pull an OCI image (or make a catalog image) into an image",
		Long: "Pull an OCI image from a registry (e.g. debian:bookworm, ghcr.io/o/r:tag) for\n" +
			"linux/<host arch>, flatten its layers and build an ext4 image with the kiln agent\n" +
			"in it; or make a catalog image by name (see `kiln image list --available`).\n" +
			"Registry credentials come from the Docker config of the daemon's user.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Ref = args[0]
			if req.Name != "" {
				if err := api.ValidateName("image", req.Name); err != nil {
					return err
				}
			}
			if req.Size != "" {
				if _, err := api.ParseSize(req.Size); err != nil {
					return err
				}
			}
			ctx := cmd.Context()
			c, err := e.client(ctx)
			if err != nil {
				return err
			}
			op, err := c.PullImage(ctx, req)
			if err != nil {
				return err
			}
			if _, err := e.follow(ctx, c, op); err != nil {
				return err
			}
			return e.showImage(cmd, op.Target)
		},
	}
	cmd.Flags().StringVar(&req.Name, "name", "", "image name (default: the catalog name, or derived from REF)")
	cmd.Flags().StringVar(&req.Kernel, "kernel", "", "kernel VMs of this image boot by default")
	cmd.Flags().StringVar(&req.Size, "size", "", "filesystem size (default: content + headroom)")
	return cmd
}

func newImageCacheCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "cache", Short: "Manage the OCI layer cache"}
	var dryRun bool
	prune := &cobra.Command{
		Use: "prune [--dry-run]", Short: "Delete cached OCI layers (images are not affected)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			res, err := c.PruneImageCache(cmd.Context(), api.PruneCacheRequest{DryRun: dryRun})
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(res)
			}
			verb := "freed"
			if res.DryRun {
				verb = "would free"
			}
			fmt.Fprintf(e.stdout, "%s %s (%d blobs)\n", verb, humanSize(res.Bytes), res.Blobs)
			return nil
		},
	}
	prune.Flags().BoolVar(&dryRun, "dry-run", false, "only report what would be freed")
	cmd.AddCommand(prune)
	return cmd
}

func (e *env) listCatalog(ctx context.Context, c *client.Client) error {
	cat, err := c.ImageCatalog(ctx)
	if err != nil {
		return err
	}
	if e.jsonOut {
		return e.printJSON(cat)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPRESENT\tSOURCE\tDESCRIPTION")
	for _, i := range cat {
		present := "-"
		if i.Present {
			present = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", i.Name, present, i.Source, i.Description)
	}
	return tw.Flush()
}
