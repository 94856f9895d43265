package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kilnvm/kiln/internal/api"
)

func newImageCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Import, build and manage root filesystem images"}
	var (
		tarPath, dir, kernel, size string
	)
	importCmd := &cobra.Command{
		Use:   "import NAME (--rootfs-tar FILE|- | --dir DIR)",
		Short: "Make an image from a rootfs tarball or directory",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := api.ValidateName("image", name); err != nil {
				return err
			}
			if (tarPath == "") == (dir == "") {
				return api.Errorf(api.ErrBadRequest, "name exactly one source: --rootfs-tar FILE (or - for stdin) or --dir DIR")
			}
			if size != "" {
				if _, err := api.ParseSize(size); err != nil {
					return err
				}
			}
			req := api.ImportImageRequest{Name: name, Kernel: kernel, Size: size}
			ctx := cmd.Context()
			if dir != "" {
				abs, err := filepath.Abs(dir)
				if err != nil {
					return err
				}
				if st, err := os.Stat(abs); err != nil || !st.IsDir() {
					return api.Errorf(api.ErrBadRequest, "%s is not a directory", abs)
				}
				req.Dir = abs
				c, err := e.client(ctx)
				if err != nil {
					return err
				}
				op, err := c.ImportImageDir(ctx, req)
				if err != nil {
					return err
				}
				if _, err := e.follow(ctx, c, op); err != nil {
					return err
				}
				return e.showImage(cmd, name)
			}
			var r io.Reader = e.stdin
			if tarPath != "-" {
				f, err := os.Open(tarPath)
				if err != nil {
					return fmt.Errorf("%v: %w", err, api.ErrBadRequest)
				}
				defer f.Close()
				r = f
			}
			c, err := e.client(ctx)
			if err != nil {
				return err
			}
			if _, err := c.ImportImageTar(ctx, req, r); err != nil {
				return err
			}
			return e.showImage(cmd, name)
		},
	}
	importCmd.Flags().StringVar(&tarPath, "rootfs-tar", "", "rootfs tarball (plain, gzip, xz or zstd), - for stdin")
	importCmd.Flags().StringVar(&dir, "dir", "", "rootfs directory")
	importCmd.Flags().StringVar(&kernel, "kernel", "", "kernel VMs of this image boot by default")
	importCmd.Flags().StringVar(&size, "size", "", "filesystem size (default: content + headroom)")

	var build api.BuildImageRequest
	var include string
	buildCmd := &cobra.Command{
		Use:   "build NAME --debootstrap SUITE [--mirror URL] [--include PKGS]",
		Short: "Build a Debian image with debootstrap",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			build.Name = args[0]
			if err := api.ValidateName("image", build.Name); err != nil {
				return err
			}
			if build.Suite == "" {
				return api.Errorf(api.ErrBadRequest, "--debootstrap SUITE is required (e.g. bookworm)")
			}
			if include != "" {
				build.Include = strings.Split(include, ",")
			}
			ctx := cmd.Context()
			c, err := e.client(ctx)
			if err != nil {
				return err
			}
			op, err := c.BuildImage(ctx, build)
			if err != nil {
				return err
			}
			if _, err := e.follow(ctx, c, op); err != nil {
				return err
			}
			return e.showImage(cmd, build.Name)
		},
	}
	buildCmd.Flags().StringVar(&build.Suite, "debootstrap", "", "Debian suite to bootstrap (bookworm, trixie, ...)")
	buildCmd.Flags().StringVar(&build.Mirror, "mirror", "", "mirror URL (default: the host's apt source)")
	buildCmd.Flags().StringVar(&include, "include", "", "extra packages, comma-separated")
	buildCmd.Flags().StringVar(&build.Kernel, "kernel", "", "kernel VMs of this image boot by default")
	buildCmd.Flags().StringVar(&build.Size, "size", "", "filesystem size (default: content + headroom)")

	var available bool
	listCmd := &cobra.Command{
		Use: "list [--available]", Aliases: []string{"ls"}, Short: "List images (--available: the catalog)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			if available {
				return e.listCatalog(cmd.Context(), c)
			}
			is, err := c.ListImages(cmd.Context())
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(is)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSIZE\tINIT\tKERNEL\tSOURCE\tCREATED")
			for _, i := range is {
				init := "agent"
				if i.HasSystemd {
					init = "systemd"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", i.Name, humanSize(i.Size), init, i.Kernel, i.Source, ago(i.CreatedAt))
			}
			return tw.Flush()
		},
	}
	showCmd := &cobra.Command{
		Use: "show NAME", Short: "Show an image", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			i, err := c.GetImage(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return e.printJSON(i)
		},
	}
	rmCmd := &cobra.Command{
		Use: "rm NAME...", Aliases: []string{"delete"}, Short: "Remove images (refused while a VM uses one)", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			return e.forEachVM(cmd.Context(), args, c.DeleteImage)
		},
	}
	listCmd.Flags().BoolVar(&available, "available", false, "list the images kiln can pull or build by name")
	cmd.AddCommand(importCmd, buildCmd, listCmd, showCmd, rmCmd, newImagePullCmd(e), newImageCacheCmd(e),
		newImageRegisterCmd(e), newImagePromoteCmd(e)) // image_register.go
	return cmd
}

func (e *env) showImage(cmd *cobra.Command, name string) error {
	c, err := e.client(cmd.Context())
	if err != nil {
		return err
	}
	i, err := c.GetImage(cmd.Context(), name)
	if err != nil {
		return err
	}
	if e.jsonOut {
		return e.printJSON(i)
	}
	fmt.Fprintf(e.stdout, "image %s: %s ext4 (%s)\n", i.Name, humanSize(i.Size), i.Source)
	return nil
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0fMiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%dKiB", n>>10)
}
