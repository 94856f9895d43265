package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/api/client"
)

func newVMCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "vm", Short: "Create, run and manage VMs"}
	cmd.AddCommand(newVMRunCmd(e), newVMCreateCmd(e), newVMExecCmd(e), newVMSSHCmd(e),
		newVMListCmd(e), newVMShowCmd(e), newVMLogsCmd(e), newVMProxyCmd(e),
		newVMActionCmd(e, "start", "Boot stopped VMs"),
		newVMActionCmd(e, "stop", "Shut VMs down cleanly (guest poweroff, then escalate)"),
		newVMActionCmd(e, "kill", "Stop VMs at once (SIGKILL to the VMM)"),
		newVMDeleteCmd(e), newVMWorkspaceCmd(e),
		newVMPortsCmd(e), newVMForwardCmd(e), newVMForwardsCmd(e)) // vm_ports.go
	return cmd
}

type createFlags struct {
	name, image, kernel string
	vmm                 string
	vcpus, memory       int
	noNAT               bool
}

func (f *createFlags) bind(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.name, "name", "", "VM name (default: generated)")
	cmd.Flags().StringVar(&f.image, "image", "", "image to boot (default from the configuration)")
	cmd.Flags().StringVar(&f.kernel, "kernel", "", "kernel to boot (default: the image's, then the configuration's)")
	cmd.Flags().IntVar(&f.vcpus, "vcpus", 0, "virtual CPUs")
	cmd.Flags().IntVar(&f.memory, "memory", 0, "memory in MiB")
	cmd.Flags().StringVar(&f.vmm, "vmm", "", "VMM for this VM: qemu, firecracker or auto (default: the daemon's)")
	cmd.Flags().BoolVar(&f.noNAT, "no-nat", false, "keep the VM off NAT: it reaches the host and other VMs only (when the daemon's network is on)")
}

func (f *createFlags) request() (api.CreateVMRequest, error) {
	name := f.name
	if name == "" {
		var b [3]byte
		_, _ = rand.Read(b[:])
		name = "vm-" + hex.EncodeToString(b[:])
	}
	if err := api.ValidateName("VM", name); err != nil {
		return api.CreateVMRequest{}, err
	}
	return api.CreateVMRequest{Name: name, Image: f.image, Kernel: f.kernel, VCPUs: f.vcpus, MemoryMiB: f.memory, NoNAT: f.noNAT, VMM: f.vmm}, nil
}

// createVM runs a create operation to its end, showing its stages.
func (e *env) createVM(ctx context.Context, c *client.Client, req api.CreateVMRequest) (api.VM, error) {
	op, err := c.CreateVM(ctx, req)
	if err != nil {
		return api.VM{}, err
	}
	if e.isTTY() && !e.jsonOut {
		fmt.Fprintf(e.stderr, "creating vm %s %s\n", req.Name, e.dim("(op "+op.ID+")"))
	}
	start := time.Now()
	if _, err := e.follow(ctx, c, op); err != nil {
		return api.VM{}, err
	}
	vm, err := c.GetVM(ctx, req.Name)
	if err == nil && !e.jsonOut && e.isTTY() {
		fmt.Fprintf(e.stderr, "vm %s is %s %s\n", vm.Name, vm.State, e.dim(fmtDur(time.Since(start))))
	}
	return vm, err
}

func newVMCreateCmd(e *env) *cobra.Command {
	var f createFlags
	var noStart bool
	cmd := &cobra.Command{
		Use:   "create [--name NAME] [--image IMAGE]",
		Short: "Create a VM and boot it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := f.request()
			if err != nil {
				return err
			}
			req.NoStart = noStart
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			vm, err := e.createVM(cmd.Context(), c, req)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(vm)
			}
			fmt.Fprintln(e.stdout, vm.Name)
			return nil
		},
	}
	f.bind(cmd)
	cmd.Flags().BoolVar(&noStart, "no-start", false, "create the VM's disks without booting it")
	return cmd
}

func newVMListCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls", "ps"},
		Short:   "List VMs",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			vms, err := c.ListVMs(cmd.Context())
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(vms)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tIMAGE\tKERNEL\tCPUS\tMEMORY\tVMM\tCREATED")
			for _, v := range vms {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%dMiB\t%s\t%s\n", v.Name, v.State, v.Image, v.Kernel, v.VCPUs, v.MemoryMiB,
					strings.TrimSuffix(v.Driver+"/"+v.Accel, "/"), ago(v.CreatedAt))
			}
			return tw.Flush()
		},
	}
}

func ago(t time.Time) string {
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.Format("2006-01-02")
}

func newVMShowCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "show VM",
		Short: "Show a VM",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			vm, err := c.GetVM(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(vm)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			row := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
			row("name", vm.Name)
			row("id", vm.ID)
			row("state", vm.State)
			row("image", vm.Image)
			row("kernel", vm.Kernel)
			row("vcpus", vm.VCPUs)
			row("memory", fmt.Sprintf("%d MiB", vm.MemoryMiB))
			row("vmm", strings.TrimSuffix(vm.Driver+"/"+vm.Accel, "/"))
			if vm.Address != "" {
				row("address", vm.Address)
			}
			if vm.DNSName != "" {
				row("dns name", vm.DNSName)
			}
			if vm.PID != 0 {
				row("pid", vm.PID)
			}
			row("host key", vm.HostKeyFingerprint)
			row("created", vm.CreatedAt.Format(time.RFC3339))
			if vm.LastError != "" {
				row("last error", vm.LastError)
			}
			return tw.Flush()
		},
	}
}

// forEachVM runs fn on several VMs concurrently and reports in the order
// given; the command fails if any failed.
func (e *env) forEachVM(ctx context.Context, names []string, fn func(ctx context.Context, name string) error) error {
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(ctx, n)
		}()
	}
	wg.Wait()
	var failed []error
	for i, n := range names {
		if errs[i] != nil {
			if len(names) > 1 {
				e.printError(fmt.Errorf("%s: %w", n, errs[i]))
			}
			failed = append(failed, errs[i])
		} else if !e.jsonOut {
			fmt.Fprintln(e.stdout, n)
		}
	}
	if len(names) == 1 && len(failed) == 1 {
		return failed[0]
	}
	if len(failed) > 0 {
		return &exitError{code: api.ClassOf(failed[0]).ExitCode()}
	}
	return nil
}

func newVMActionCmd(e *env, action, short string) *cobra.Command {
	return &cobra.Command{
		Use:   action + " VM...",
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			return e.forEachVM(cmd.Context(), args, func(ctx context.Context, name string) error {
				_, err := c.VMAction(ctx, name, action)
				return err
			})
		},
	}
}

func newVMDeleteCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:     "delete VM...",
		Aliases: []string{"rm"},
		Short:   "Delete VMs and everything they hold (a running VM is killed)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			return e.forEachVM(cmd.Context(), args, c.DeleteVM)
		},
	}
}

func newOpsCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "operation", Aliases: []string{"op"}, Short: "List and cancel asynchronous operations"}
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List operations", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			ops, err := c.Operations(cmd.Context())
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(ops)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tTARGET\tSTATE\tSTAGE\tSTARTED")
			for _, op := range ops {
				stage := ""
				if n := len(op.Stages); n > 0 {
					stage = op.Stages[n-1].Name
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", op.ID, op.Kind, op.Target, op.State, stage, ago(op.CreatedAt))
			}
			return tw.Flush()
		},
	}, &cobra.Command{
		Use: "cancel ID", Short: "Cancel a running operation (it rolls back)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			return c.CancelOperation(cmd.Context(), args[0])
		},
	})
	return cmd
}
