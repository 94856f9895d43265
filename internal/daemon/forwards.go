package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/lockorder"
	"github.com/kilnvm/kiln/internal/store"
	"github.com/kilnvm/kiln/internal/vmm"
)

// forwardHost is the only address forwards listen on: a forward exposes a
// guest port to the host's own users, never to the network.
const forwardHost = "127.0.0.1"

// forwardSet holds the daemon's port forwards: a listener on the host per
// forward, each connection spliced to an SSH direct-tcpip channel through
// the VM's agent (so forwards work with guest networking off). Each is
// also recorded in the store: they end with the VM (stop, kill, delete) or
// when removed; the daemon's exit closes the listeners but keeps the
// records, and the next daemon restores them (restoreForwards).
type forwardSet struct {
	mu lockorder.Mutex // guards m; a leaf: never held across guest I/O or listener Close
	m  map[int]*forward
}

// forward is one listener and its live connections.
type forward struct {
	api.Forward
	vmID string
	l    net.Listener

	mu     lockorder.Mutex        // guards conns and closed; a leaf, never nested with forwardSet.mu
	conns  map[io.Closer]struct{} // host connections and guest streams
	closed bool
	done   sync.WaitGroup // the accept loop and the connections' splices
}

// AddForward starts forwarding a 127.0.0.1 host port to a guest port of a
// running VM. A taken host port is a conflict; nothing is left behind on
// failure.
func (d *Daemon) AddForward(ctx context.Context, ref string, req api.ForwardRequest) (api.Forward, error) {
	if req.GuestPort < 1 || req.GuestPort > 65535 {
		return api.Forward{}, api.Errorf(api.ErrBadRequest, "guest port %d: want 1-65535", req.GuestPort)
	}
	if req.HostPort < 0 || req.HostPort > 65535 {
		return api.Forward{}, api.Errorf(api.ErrBadRequest, "host port %d: want 0-65535 (0 picks a free one)", req.HostPort)
	}
	var out api.Forward
	err := d.withVM(ctx, ref, func(v store.VM) error {
		if err := requireState(v, "forward a port to", api.StateRunning); err != nil {
			return err
		}
		h, err := d.readHandle(v.ID)
		if err != nil {
			return fmt.Errorf("vm %q has no live handle: %w", v.Name, api.ErrUnavailable)
		}
		l, err := listenForward(ctx, req.HostPort)
		if err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				return api.Hinted(fmt.Errorf("host port %d is in use: %w", req.HostPort, api.ErrConflict),
					"pick another host port (HOST_PORT:GUEST_PORT), or 0 for a free one; `kiln vm forward --list` shows kiln's forwards")
			}
			return err
		}
		// Listen, then record: a daemon that dies in between loses the
		// listener with its process, and no record brings it back.
		port := l.Addr().(*net.TCPAddr).Port
		if err := d.store.PutForward(ctx, store.Forward{VMID: v.ID, HostAddr: forwardHost, HostPort: port, GuestPort: req.GuestPort}); err != nil {
			l.Close()
			return err
		}
		f := d.serveNewForward(v, h, l, req.GuestPort)
		d.logger.Info("port forward added", "vm", v.Name, "host_port", f.HostPort, "guest_port", f.GuestPort, "op_id", opID(ctx))
		out = f.Forward
		return nil
	})
	return out, err
}

// listenForward listens on forwardHost:port (0 picks a free port).
func listenForward(ctx context.Context, port int) (net.Listener, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp4", net.JoinHostPort(forwardHost, strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("listen on %s:%d: %w", forwardHost, port, err)
	}
	return l, nil
}

// serveNewForward adds the forward of l to the set and starts serving it.
func (d *Daemon) serveNewForward(v store.VM, h vmm.Handle, l net.Listener, guestPort int) *forward {
	f := &forward{vmID: v.ID, l: l, conns: map[io.Closer]struct{}{}, mu: lockorder.Mutex{Name: lockForward, Order: d.lockOrder},
		Forward: api.Forward{VM: v.Name, HostAddr: forwardHost, HostPort: l.Addr().(*net.TCPAddr).Port, GuestPort: guestPort}}
	d.fwd.mu.Lock()
	if d.fwd.m == nil {
		d.fwd.m = map[int]*forward{}
	}
	d.fwd.m[f.HostPort] = f
	d.fwd.mu.Unlock()
	log := d.logger.With("vm", v.Name, "host_port", f.HostPort, "guest_port", f.GuestPort)
	f.done.Add(1)
	go func() {
		defer f.done.Done()
		d.serveForward(f, h, log)
	}()
	return f
}

// serveForward accepts until the listener is closed; each connection gets
// its own direct-tcpip channel to 127.0.0.1:GuestPort in the guest.
func (d *Daemon) serveForward(f *forward, h vmm.Handle, log *slog.Logger) {
	for {
		conn, err := f.l.Accept()
		if err != nil {
			return // closed
		}
		if !f.track(conn) {
			conn.Close()
			return
		}
		f.done.Add(1)
		go func() {
			defer f.done.Done()
			defer f.untrack(conn)
			defer conn.Close()
			gc, err := d.guests.get(f.vmID, h, d.layout.VMDir(f.vmID), d.logger)
			if err != nil {
				log.Warn("port forward: no agent channel", "err", err)
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			stream, err := gc.DialGuest(ctx, "127.0.0.1", f.GuestPort)
			cancel()
			if err != nil {
				log.Info("port forward: guest connection failed", "err", err)
				return
			}
			if !f.track(stream) {
				stream.Close()
				return
			}
			defer f.untrack(stream)
			splice(conn, conn, stream)
		}()
	}
}

func (f *forward) track(c io.Closer) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *forward) untrack(c io.Closer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns, c)
}

// close stops the listener and every live connection, and waits for the
// forward's goroutines.
func (f *forward) close() {
	f.mu.Lock()
	f.closed = true
	conns := f.conns
	f.conns = map[io.Closer]struct{}{}
	f.mu.Unlock()
	f.l.Close()
	for c := range conns {
		c.Close()
	}
	f.done.Wait()
}

// take removes and returns the forwards matching match.
func (s *forwardSet) take(match func(*forward) bool) []*forward {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*forward
	for port, f := range s.m {
		if match(f) {
			out = append(out, f)
			delete(s.m, port)
		}
	}
	return out
}

// releaseVM ends every forward of a VM (it stopped or is deleted).
func (s *forwardSet) releaseVM(vmID string) {
	for _, f := range s.take(func(f *forward) bool { return f.vmID == vmID }) {
		f.close()
	}
}

func (s *forwardSet) closeAll() {
	for _, f := range s.take(func(*forward) bool { return true }) {
		f.close()
	}
}

// list returns the forwards of one VM (vmID "" for all), by host port.
func (s *forwardSet) list(vmID string) []api.Forward {
	s.mu.Lock()
	out := []api.Forward{}
	for _, f := range s.m {
		if vmID == "" || f.vmID == vmID {
			out = append(out, f.Forward)
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].HostPort < out[j].HostPort })
	return out
}

// RemoveForward ends the forward of a VM's host port.
func (d *Daemon) RemoveForward(ctx context.Context, ref string, hostPort int) error {
	v, err := d.store.GetVM(ctx, ref)
	if err != nil {
		return err
	}
	fs := d.fwd.take(func(f *forward) bool { return f.vmID == v.ID && f.HostPort == hostPort })
	if len(fs) == 0 {
		return api.Hinted(fmt.Errorf("vm %q has no forward of host port %d: %w", v.Name, hostPort, api.ErrNotFound),
			fmt.Sprintf("see `kiln vm forward --list %s`", v.Name))
	}
	// Forget, then close: a daemon that dies in between loses the
	// listener with its process, and no record brings it back.
	if err := d.store.DeleteForward(ctx, v.ID, forwardHost, hostPort); err != nil {
		d.fwd.put(fs...)
		return err
	}
	for _, f := range fs {
		f.close()
	}
	d.log(ctx).Info("port forward removed", "vm", v.Name, "host_port", hostPort)
	return nil
}

// put adds forwards taken out of the set back into it.
func (s *forwardSet) put(fs ...*forward) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[int]*forward{}
	}
	for _, f := range fs {
		s.m[f.HostPort] = f
	}
}

// releaseForwards ends every forward of a VM that stopped or is deleted,
// and forgets their records first (a record left behind by a failure is
// dropped by restoreForwards, the VM not running).
func (d *Daemon) releaseForwards(ctx context.Context, vmID string) {
	if err := d.store.DeleteVMForwards(ctx, vmID); err != nil {
		d.log(ctx).Warn("forget the port forwards of a vm", "vm_id", vmID, "err", err)
	}
	d.fwd.releaseVM(vmID)
}

// restoreForwards re-opens, at daemon start after reconcile, the recorded
// forwards of VMs that still run, each on its recorded host port. A record
// that cannot be restored (the VM no longer runs, or the host port is
// taken now) is dropped with a warning: it no longer shows in `kiln vm
// forwards` and the user adds it again. It never fails the start.
func (d *Daemon) restoreForwards(ctx context.Context) {
	recs, err := d.store.ListForwards(ctx)
	if err != nil {
		d.logger.Warn("restore port forwards: cannot list them; none restored", "err", err)
		return
	}
	for _, r := range recs {
		log := d.logger.With("vm_id", r.VMID, "host_port", r.HostPort, "guest_port", r.GuestPort)
		drop := func(msg string, args ...any) {
			log.Warn("restore port forwards: dropping the forward: "+msg, args...)
			if err := d.store.DeleteForward(ctx, r.VMID, r.HostAddr, r.HostPort); err != nil {
				log.Warn("restore port forwards: forget the forward", "err", err)
			}
		}
		if r.HostAddr != forwardHost {
			drop("it listens on an address kiln no longer uses", "host_addr", r.HostAddr)
			continue
		}
		v, err := d.store.GetVM(ctx, r.VMID)
		if err != nil {
			drop("its vm is gone", "err", err)
			continue
		}
		log = log.With("vm", v.Name)
		if v.State != api.StateRunning {
			drop("its vm is not running", "state", v.State)
			continue
		}
		h, err := d.readHandle(v.ID)
		if err != nil {
			drop("its vm has no live handle", "err", err)
			continue
		}
		l, err := listenForward(ctx, r.HostPort)
		if err != nil {
			reason := "the host port cannot be opened"
			if errors.Is(err, syscall.EADDRINUSE) {
				reason = "the host port is in use by another program now"
			}
			drop(reason+"; add it again with `kiln vm forward` and another host port", "err", err)
			continue
		}
		d.serveNewForward(v, h, l, r.GuestPort)
		log.Info("port forward restored")
	}
}

// Handlers.

func (d *Daemon) handleAddForward(w http.ResponseWriter, r *http.Request) error {
	var req api.ForwardRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	f, err := d.AddForward(r.Context(), r.PathValue("name"), req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, f)
}

func (d *Daemon) handleListVMForwards(w http.ResponseWriter, r *http.Request) error {
	v, err := d.store.GetVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, d.fwd.list(v.ID))
}

func (d *Daemon) handleListForwards(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, d.fwd.list(""))
}

func (d *Daemon) handleRemoveForward(w http.ResponseWriter, r *http.Request) error {
	port, err := strconv.Atoi(r.PathValue("port"))
	if err != nil || port < 1 || port > 65535 {
		return api.Errorf(api.ErrBadRequest, "host port %q: want 1-65535", r.PathValue("port"))
	}
	if err := d.RemoveForward(r.Context(), r.PathValue("name"), port); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
