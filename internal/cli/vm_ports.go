package cli

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kilnvm/kiln/internal/api"
)

func newVMPortsCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "ports VM...",
		Short: "List the listening TCP ports of VMs, with their endpoints on the host",
		Long: "List the guest's listening TCP sockets (read by the agent from /proc/net/tcp*),\n" +
			"with NAME.vm:PORT endpoints and http:// links when the daemon's network is on,\n" +
			"and the host ports forwarded to them (`kiln vm forward`).",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			var all []api.VMPorts
			for _, name := range args {
				p, err := c.VMPorts(cmd.Context(), name)
				if err != nil {
					return err
				}
				all = append(all, p)
			}
			if e.jsonOut {
				return e.printJSON(all)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VM\tPORT\tPROTO\tADDRESS\tPROCESS\tENDPOINT\tFORWARDED FROM")
			for _, vp := range all {
				for _, p := range vp.Ports {
					endpoint := p.URL
					if endpoint == "" {
						endpoint = "-"
					}
					proc := "-"
					if p.Process != "" {
						proc = fmt.Sprintf("%s[%d]", p.Process, p.PID)
					}
					fwd := "-"
					if len(p.Forwards) > 0 {
						fwd = strings.Join(p.Forwards, ",")
					}
					fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", vp.VM, p.Port, p.Proto, p.Address, proc, endpoint, fwd)
				}
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, vp := range all {
				if vp.Note != "" {
					fmt.Fprintf(e.stderr, "%s: %s\n", vp.VM, vp.Note)
				}
			}
			return nil
		},
	}
}

// parseForwardSpec reads [HOST_PORT:]GUEST_PORT; the host port defaults to
// the guest port, and 0 picks a free one.
func parseForwardSpec(spec string) (api.ForwardRequest, error) {
	hostS, guestS, hasHost := strings.Cut(spec, ":")
	if !hasHost {
		hostS, guestS = spec, spec
	}
	guest, err := strconv.Atoi(guestS)
	if err != nil || guest < 1 || guest > 65535 {
		return api.ForwardRequest{}, api.Errorf(api.ErrBadRequest, "forward %q: want [HOST_PORT:]GUEST_PORT with GUEST_PORT 1-65535", spec)
	}
	host, err := strconv.Atoi(hostS)
	if err != nil || host < 0 || host > 65535 {
		return api.ForwardRequest{}, api.Errorf(api.ErrBadRequest, "forward %q: want [HOST_PORT:]GUEST_PORT with HOST_PORT 0-65535 (0 picks a free port)", spec)
	}
	return api.ForwardRequest{HostPort: host, GuestPort: guest}, nil
}

func newVMForwardCmd(e *env) *cobra.Command {
	var list, rm bool
	cmd := &cobra.Command{
		Use:   "forward VM [HOST_PORT:]GUEST_PORT | --list [VM] | --rm VM HOST_PORT",
		Short: "Forward a 127.0.0.1 host port into a VM through the agent channel",
		Long: "Forward 127.0.0.1:HOST_PORT on the host to port GUEST_PORT on the guest's loopback,\n" +
			"through the agent's channel, so it works with the guest's network off. HOST_PORT\n" +
			"defaults to GUEST_PORT; 0 picks a free one. The daemon holds the forward until\n" +
			"`--rm`, or until the VM stops or is deleted; a daemon restart re-opens it on the\n" +
			"same host port (or drops it, with a warning in its log, if that port is taken).",
		Example: "  kiln vm forward box 8080          # 127.0.0.1:8080 -> box:8080\n" +
			"  kiln vm forward box 3000:80       # 127.0.0.1:3000 -> box:80\n" +
			"  kiln vm forward --list\n" +
			"  kiln vm forward --rm box 3000",
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case list && rm:
				return api.Errorf(api.ErrBadRequest, "--list and --rm go separately")
			case list:
				if len(args) > 1 {
					return api.Errorf(api.ErrBadRequest, "--list takes at most one VM")
				}
				name := ""
				if len(args) == 1 {
					name = args[0]
				}
				return e.listForwards(cmd, name)
			case rm:
				if len(args) != 2 {
					return api.Errorf(api.ErrBadRequest, "--rm takes a VM and a host port")
				}
				port, err := strconv.Atoi(args[1])
				if err != nil || port < 1 || port > 65535 {
					return api.Errorf(api.ErrBadRequest, "host port %q: want 1-65535", args[1])
				}
				c, err := e.client(cmd.Context())
				if err != nil {
					return err
				}
				return c.RemoveForward(cmd.Context(), args[0], port)
			}
			if len(args) != 2 {
				return api.Errorf(api.ErrBadRequest, "want VM [HOST_PORT:]GUEST_PORT")
			}
			req, err := parseForwardSpec(args[1])
			if err != nil {
				return err
			}
			c, err := e.client(cmd.Context())
			if err != nil {
				return err
			}
			f, err := c.AddForward(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			if e.jsonOut {
				return e.printJSON(f)
			}
			fmt.Fprintf(e.stdout, "%s:%d -> %s:%d\n", f.HostAddr, f.HostPort, f.VM, f.GuestPort)
			return nil
		},
	}
	cmd.Flags().BoolVar(&list, "list", false, "list forwards (of one VM, or all)")
	cmd.Flags().BoolVar(&rm, "rm", false, "remove the forward of a host port")
	return cmd
}

func newVMForwardsCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "forwards [VM]",
		Short: "List port forwards (of one VM, or all)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			return e.listForwards(cmd, name)
		},
	}
}

func (e *env) listForwards(cmd *cobra.Command, name string) error {
	c, err := e.client(cmd.Context())
	if err != nil {
		return err
	}
	fs, err := c.Forwards(cmd.Context(), name)
	if err != nil {
		return err
	}
	if e.jsonOut {
		return e.printJSON(fs)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tHOST\tGUEST PORT")
	for _, f := range fs {
		fmt.Fprintf(tw, "%s\t%s:%d\t%d\n", f.VM, f.HostAddr, f.HostPort, f.GuestPort)
	}
	return tw.Flush()
}
