package daemon

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/kilnvm/kiln/internal/api"
)

// portsTimeout bounds the agent's answer to a ports request.
const portsTimeout = 15 * time.Second

// VMPorts asks a running VM's agent for its listening sockets and adds
// where the host reaches each: NAME.vm:PORT on kiln's network (not for
// sockets bound to the guest's loopback), and the host ports forwarded to it.
func (d *Daemon) VMPorts(ctx context.Context, ref string) (api.VMPorts, error) {
	v, err := d.store.GetVM(ctx, ref)
	if err != nil {
		return api.VMPorts{}, err
	}
	if err := requireState(v, "list the ports of", api.StateRunning); err != nil {
		return api.VMPorts{}, err
	}
	h, err := d.readHandle(v.ID)
	if err != nil {
		return api.VMPorts{}, fmt.Errorf("vm %q has no live handle: %w", v.Name, api.ErrUnavailable)
	}
	gc, err := d.guests.get(v.ID, h, d.layout.VMDir(v.ID), d.logger)
	if err != nil {
		return api.VMPorts{}, err
	}
	pctx, cancel := context.WithTimeout(ctx, portsTimeout)
	defer cancel()
	ps, err := gc.Ports(pctx)
	if err != nil {
		return api.VMPorts{}, fmt.Errorf("list the ports of vm %q: %w", v.Name, err)
	}
	vm := d.toAPI(v)
	out := api.VMPorts{VM: v.Name, DNSName: vm.DNSName, Address: vm.Address, Ports: []api.Port{}}
	if vm.DNSName == "" {
		out.Note = "the daemon's network is off: reach guest ports with `kiln vm forward " + v.Name + " PORT`"
	}
	fwds := map[int][]string{}
	for _, f := range d.fwd.list(v.ID) {
		fwds[f.GuestPort] = append(fwds[f.GuestPort], net.JoinHostPort(f.HostAddr, strconv.Itoa(f.HostPort)))
	}
	for _, p := range ps {
		ap := api.Port{Proto: p.Proto, Address: p.Address, Port: p.Port, Process: p.Process, PID: p.PID, Forwards: fwds[p.Port]}
		if a, err := netip.ParseAddr(p.Address); err == nil && !a.IsLoopback() && vm.DNSName != "" {
			ap.Endpoint = net.JoinHostPort(vm.DNSName, strconv.Itoa(p.Port))
			ap.URL = "http://" + ap.Endpoint + "/"
		}
		out.Ports = append(out.Ports, ap)
	}
	return out, nil
}

func (d *Daemon) handleVMPorts(w http.ResponseWriter, r *http.Request) error {
	p, err := d.VMPorts(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, p)
}
