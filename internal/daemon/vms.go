package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/cpio"
	"github.com/kilnvm/kiln/internal/daemon/opstate"
	"github.com/kilnvm/kiln/internal/guest"
	"github.com/kilnvm/kiln/internal/paths"
	"github.com/kilnvm/kiln/internal/store"
	"github.com/kilnvm/kiln/internal/vmm"
)

// Stage names of a VM create or start, in order. They are shown to users
// with their durations and are the daemon's fault points.
const (
	stageResolve = "resolve image"
	stageDisk    = "prepare disks"
	stageConfig  = "write config"
	stageBoot    = "boot"
	stageAgent   = "wait for agent"
)

func newVMID() string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// failpoint kills the daemon with SIGKILL when the configured fault point
// is reached: crash tests use it to prove reconcile repairs every stage.
func (d *Daemon) failpoint(name string) {
	if d.cfg.Failpoint != "" && d.cfg.Failpoint == name {
		d.logger.Warn("failpoint reached: killing the daemon", "failpoint", name)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}

// stage reports a stage on the operation and passes its fault point.
func (d *Daemon) stage(op *opstate.Op, name, detail string) {
	if op != nil {
		op.Stage(name, detail)
	}
	d.failpoint(name)
}

func (d *Daemon) toAPI(v store.VM) api.VM {
	out := api.VM{ID: v.ID, Name: v.Name, State: v.State, Image: v.Image, Kernel: v.Kernel,
		VCPUs: v.VCPUs, MemoryMiB: v.MemoryMiB, Driver: v.Driver, CreatedAt: v.CreatedAt,
		UpdatedAt: v.UpdatedAt, LastError: v.LastError, HostKeyFingerprint: v.HostKeyFP}
	d.netAddress(context.Background(), &out) // network.go
	if v.State == api.StateRunning {
		if h, err := d.readHandle(v.ID); err == nil {
			out.PID, out.Accel = h.PID, h.Accel
		}
	}
	return out
}

// CreateVM validates req and reserves the name synchronously (so a taken
// name fails at once and changes nothing), then builds and boots the VM in
// an operation.
func (d *Daemon) CreateVM(ctx context.Context, req api.CreateVMRequest) (*opstate.Op, error) {
	if err := api.ValidateName("VM", req.Name); err != nil {
		return nil, err
	}
	if req.Image == "" {
		req.Image = d.cfg.DefaultImage
	}
	if req.VCPUs == 0 {
		req.VCPUs = d.cfg.VCPUs
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = d.cfg.MemoryMiB
	}
	if req.VCPUs < 1 || req.VCPUs > 64 {
		return nil, api.Errorf(api.ErrBadRequest, "vcpus %d: want 1-64", req.VCPUs)
	}
	if req.MemoryMiB < 128 || req.MemoryMiB > 1<<20 {
		return nil, api.Errorf(api.ErrBadRequest, "memory %d MiB: want 128 MiB to 1 TiB", req.MemoryMiB)
	}
	img, err := d.images.Get(ctx, req.Image)
	if err != nil {
		img, err = d.imageOrCatalog(req.Image, err) // image_autopull.go: the create op makes a catalog image
	}
	if err != nil {
		return nil, api.Hinted(fmt.Errorf("image %q: %w", req.Image, err), "see `kiln image list`; build the default with `kiln image build debian --debootstrap bookworm`")
	}
	if req.Kernel == "" {
		req.Kernel = img.KernelName
	}
	if req.Kernel == "" {
		req.Kernel = d.cfg.DefaultKernel
	}
	drv, err := d.drivers.forRequest(req.VMM) // drivers.go
	if err != nil {
		return nil, err
	}
	if _, err := d.kernels.Get(ctx, req.Kernel); err != nil {
		return nil, api.Hinted(fmt.Errorf("kernel %q: %w", req.Kernel, err), "see `kiln kernel list`; get one with `kiln kernel pull debian`")
	}
	rec := store.VM{ID: newVMID(), Name: req.Name, State: api.StateCreating, Image: req.Image,
		Kernel: req.Kernel, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, Driver: drv.Name()}
	d.createVMMu.Lock()
	err = d.store.CreateVM(ctx, rec)
	d.createVMMu.Unlock()
	if err != nil {
		return nil, err
	}
	return d.ops.Begin(ctx, "vm.create", req.Name, func(ctx context.Context, op *opstate.Op) (any, error) {
		mu := d.vmLocks.get(rec.ID)
		mu.Lock()
		defer mu.Unlock()
		return d.createLocked(ctx, op, rec, req.NoStart, d.cfg.NAT && !req.NoNAT)
	}), nil
}

func (d *Daemon) createLocked(ctx context.Context, op *opstate.Op, rec store.VM, noStart, nat bool) (_ any, err error) {
	log := d.logger.With("op_id", op.ID(), "vm", rec.Name, "vm_id", rec.ID)
	var undo undoStack
	undo.push("record", func(ctx context.Context) error { return d.store.DeleteVM(ctx, rec.ID) })
	defer func() {
		if err != nil {
			log.Warn("vm create failed; rolling back", "err", err, "stage", op.CurrentStage())
			if uerr := undo.run(ctx, log); uerr != nil {
				err = errors.Join(err, uerr)
			}
			d.vmLocks.forget(rec.ID)
		}
	}()

	if err := d.ensureImage(ctx, op, rec.Image); err != nil { // image_autopull.go
		return nil, err
	}
	d.stage(op, stageResolve, rec.Image)
	img, err := d.images.Get(ctx, rec.Image)
	if err != nil {
		return nil, err
	}
	dir := d.layout.VMDir(rec.ID)
	undo.push("vm directory", func(ctx context.Context) error {
		return errors.Join(os.RemoveAll(dir), os.RemoveAll(d.layout.VMRunDir(rec.ID)))
	})
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create vm directory: %w", err)
	}

	d.stage(op, stageDisk, fmt.Sprintf("%s clone of %s", d.disks.Name(), humanBytes(img.SizeBytes)))
	if err := d.disks.Clone(ctx, img.RootFS, filepath.Join(dir, paths.VMRootDisk)); err != nil {
		return nil, fmt.Errorf("clone root disk: %w", err)
	}
	hostKey, err := guest.NewKeyPair()
	if err != nil {
		return nil, err
	}
	clientKey, err := guest.NewKeyPair()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, paths.VMHostKey), hostKey.PrivatePEM, 0o600); err != nil {
		return nil, fmt.Errorf("write host key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, paths.VMClientKey), clientKey.PrivatePEM, 0o600); err != nil {
		return nil, fmt.Errorf("write client key: %w", err)
	}
	fp, err := fingerprint(hostKey.AuthorizedKey)
	if err != nil {
		return nil, err
	}
	if err := d.store.SetVMHostKey(ctx, rec.ID, fp); err != nil {
		return nil, err
	}
	if err := d.netAllocate(ctx, rec, nat, &undo); err != nil { // network.go
		return nil, err
	}
	if noStart {
		if err := d.store.SetVMState(ctx, rec.ID, api.StateStopped, ""); err != nil {
			return nil, err
		}
		undo.release()
		rec.State = api.StateStopped
		return d.toAPI(rec), nil
	}
	if err := d.boot(ctx, op, rec, &undo); err != nil {
		return nil, err
	}
	undo.release()
	log.Info("vm created")
	got, err := d.store.GetVM(ctx, rec.ID)
	if err != nil {
		return nil, err
	}
	return d.toAPI(got), nil
}

// boot writes the per-VM initrd, starts the VMM and waits for the agent.
// Each step pushes its undo; the caller runs them on failure. Call with
// the VM's lock held.
func (d *Daemon) boot(ctx context.Context, op *opstate.Op, rec store.VM, undo *undoStack) error {
	dir := d.layout.VMDir(rec.ID)
	drv, err := d.driverFor(rec)
	if err != nil {
		return err
	}
	netCfg, nics, err := d.netUp(ctx, op, rec, undo) // network.go; nothing when off
	if err != nil {
		return err
	}
	d.stage(op, stageConfig, "")
	k, err := d.kernels.Artifacts(ctx, rec.Kernel)
	if err != nil {
		return err
	}
	if err := d.writeInitrd(rec, k.Initramfs, netCfg, drv.Features().Channel); err != nil {
		return err
	}
	runDir := d.layout.VMRunDir(rec.ID)
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return fmt.Errorf("create vm runtime directory: %w", err)
	}
	spec := vmm.Spec{
		Name: rec.Name, Dir: runDir, CPUs: rec.VCPUs, MemoryMiB: rec.MemoryMiB,
		Kernel: k.Vmlinuz, Initrd: filepath.Join(dir, paths.VMInitrd),
		Cmdline:   guestCmdline(d.cfg.KernelCmdline),
		Disks:     []vmm.Disk{{Path: filepath.Join(dir, paths.VMRootDisk)}},
		SerialLog: filepath.Join(dir, paths.VMSerialLog),
		NICs:      nics,
	}
	qemuRunAs(d.cfg, drv.Name(), &spec) // qemu_user.go
	if err := os.WriteFile(filepath.Join(dir, paths.VMCmdline), []byte(spec.Cmdline+"\n"), 0o644); err != nil {
		return fmt.Errorf("record kernel command line: %w", err)
	}
	d.stage(op, stageBoot, drv.Name()+"/"+drv.Features().Accel)
	h, err := drv.Start(ctx, spec)
	if err != nil {
		return fmt.Errorf("start %s: %w", drv.Name(), err)
	}
	d.failpoint("vmm started")
	undo.push("vmm", func(ctx context.Context) error {
		d.guests.drop(rec.ID)
		err := drv.Kill(ctx, h)
		if err == nil {
			d.releaseVMM(drv, rec.Name)
		}
		return errors.Join(err, d.removeHandle(rec.ID))
	})
	if err := d.writeHandle(rec.ID, h); err != nil {
		return err
	}
	d.stage(op, stageAgent, "")
	wctx, cancel := context.WithTimeout(ctx, d.cfg.BootTimeout.Duration)
	defer cancel()
	gc, err := d.guests.get(rec.ID, h, dir, d.logger)
	if err != nil {
		return err
	}
	if err := gc.WaitReady(wctx); err != nil {
		if !drv.Alive(h) {
			return fmt.Errorf("the VM stopped while booting; its console says:\n%s", tailFile(spec.SerialLog, 15))
		}
		return api.Hinted(fmt.Errorf("guest agent did not answer within %s: %w; console tail:\n%s", d.cfg.BootTimeout.Duration, err, tailFile(spec.SerialLog, 15)),
			fmt.Sprintf("see `kiln vm logs %s`", rec.Name))
	}
	// Only now is the VM running: a daemon that dies before this line
	// leaves a record that reconcile rolls back (create) or kills (start).
	return d.store.SetVMState(ctx, rec.ID, api.StateRunning, "")
}

// writeInitrd assembles the VM's initrd: the kernel's base initramfs
// (modules), then a cpio with the agent as /init and the per-VM config.
func (d *Daemon) writeInitrd(rec store.VM, base string, netCfg *proto.NetworkConfig, driverChannel string) (err error) {
	dir := d.layout.VMDir(rec.ID)
	hostKey, err := os.ReadFile(filepath.Join(dir, paths.VMHostKey))
	if err != nil {
		return fmt.Errorf("read host key: %w", err)
	}
	clientPEM, err := os.ReadFile(filepath.Join(dir, paths.VMClientKey))
	if err != nil {
		return fmt.Errorf("read client key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(clientPEM)
	if err != nil {
		return fmt.Errorf("parse client key: %w", err)
	}
	cfg := proto.VMConfig{
		Name: rec.Name, Hostname: rec.Name, HostKey: string(hostKey),
		AuthorizedKeys: []string{strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))},
		RootDevice:     "/dev/vda", RootFSType: "ext4", Init: proto.InitAuto,
		Channel: channelFor(driverChannel),
		Network: netCfg,
	}
	d.applyImageRuntime(rec.Image, &cfg) // image_runtime.go: the image's Env and WorkingDir
	doc, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	agent, err := os.ReadFile(d.agentPath)
	if err != nil {
		return fmt.Errorf("read kiln-agent %s: %w", d.agentPath, err)
	}
	dst := filepath.Join(dir, paths.VMInitrd)
	tmp := dst + ".tmp"
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write initrd: %w", err)
	}
	defer out.Close()
	in, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("read base initramfs: %w", err)
	}
	_, err = io.Copy(out, in)
	in.Close()
	if err != nil {
		return fmt.Errorf("write initrd: %w", err)
	}
	w := cpio.NewWriter(out)
	if err := errors.Join(
		w.WriteFile(strings.TrimPrefix(proto.InitPath, "/"), 0o755, agent),
		w.WriteDir("kiln", 0o755),
		w.WriteFile(strings.TrimPrefix(proto.ConfigPath, "/"), 0o600, doc),
		w.Close(),
	); err != nil {
		return fmt.Errorf("write per-VM config cpio: %w", err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("write initrd: %w", err)
	}
	// A copy without secrets, for humans debugging a VM.
	cfg.HostKey = ""
	pub, _ := json.MarshalIndent(cfg, "", "  ")
	_ = os.WriteFile(filepath.Join(dir, paths.VMConfigJSON), pub, 0o600)
	return os.Rename(tmp, dst)
}

func channelFor(driverChannel string) string {
	if driverChannel == vmm.ChannelSerial {
		return "serial"
	}
	return "vsock"
}

func fingerprint(authorizedKey string) (string, error) {
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(authorizedKey))
	if err != nil {
		return "", fmt.Errorf("parse host key: %w", err)
	}
	return ssh.FingerprintSHA256(pk), nil
}

func (d *Daemon) handlePath(id string) string {
	return filepath.Join(d.layout.VMDir(id), paths.VMHandles)
}

// writeHandle records the live VMM handle before anything else refers to
// it, so a crash right after Start still finds the process at reconcile.
func (d *Daemon) writeHandle(id string, h vmm.Handle) error {
	b, _ := json.Marshal(h)
	tmp := d.handlePath(id) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write handles: %w", err)
	}
	return os.Rename(tmp, d.handlePath(id))
}

func (d *Daemon) readHandle(id string) (vmm.Handle, error) {
	var h vmm.Handle
	b, err := os.ReadFile(d.handlePath(id))
	if err != nil {
		return h, err
	}
	return h, json.Unmarshal(b, &h)
}

func (d *Daemon) removeHandle(id string) error {
	if err := os.Remove(d.handlePath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// withVM runs fn on a VM under its lock, re-reading the record once locked.
func (d *Daemon) withVM(ctx context.Context, ref string, fn func(v store.VM) error) error {
	v, err := d.store.GetVM(ctx, ref)
	if err != nil {
		return err
	}
	mu := d.vmLocks.get(v.ID)
	mu.Lock()
	defer mu.Unlock()
	v, err = d.store.GetVM(ctx, v.ID)
	if err != nil {
		return err
	}
	return fn(v)
}

func requireState(v store.VM, action string, allowed ...string) error {
	for _, s := range allowed {
		if v.State == s {
			return nil
		}
	}
	return fmt.Errorf("cannot %s vm %q in state %s: %w", action, v.Name, v.State, api.ErrFailedPrecondition)
}

// StartVM boots a stopped VM.
func (d *Daemon) StartVM(ctx context.Context, ref string) (api.VM, error) {
	var out api.VM
	err := d.withVM(ctx, ref, func(v store.VM) (err error) {
		if err := requireState(v, "start", api.StateStopped, api.StateError); err != nil {
			return err
		}
		var undo undoStack
		defer func() {
			if err != nil {
				_ = undo.run(ctx, d.log(ctx))
				_ = d.store.SetVMState(context.WithoutCancel(ctx), v.ID, api.StateStopped, err.Error())
			}
		}()
		if err := d.boot(ctx, nil, v, &undo); err != nil {
			return err
		}
		v, err = d.store.GetVM(ctx, v.ID)
		out = d.toAPI(v)
		return err
	})
	return out, err
}

// StopVM asks the guest to power off, then has the driver stop the VMM
// (ACPI, SIGTERM, SIGKILL with deadlines).
func (d *Daemon) StopVM(ctx context.Context, ref string) (api.VM, error) {
	var out api.VM
	err := d.withVM(ctx, ref, func(v store.VM) error {
		if v.State == api.StateStopped {
			out = d.toAPI(v)
			return nil
		}
		if err := requireState(v, "stop", api.StateRunning, api.StateError); err != nil {
			return err
		}
		drv, err := d.driverFor(v)
		if err != nil {
			return err
		}
		h, herr := d.readHandle(v.ID)
		if herr == nil && drv.Alive(h) {
			if gc, err := d.guests.get(v.ID, h, d.layout.VMDir(v.ID), d.logger); err == nil {
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				if err := gc.Poweroff(pctx); err != nil {
					d.log(ctx).Info("guest poweroff request failed; the driver escalates", "vm", v.Name, "err", err)
				}
				cancel()
			}
			if err := drv.Stop(ctx, h, d.cfg.StopTimeout.Duration); err != nil {
				return fmt.Errorf("stop vm %q: %w", v.Name, err)
			}
		}
		if err := d.markStopped(ctx, v.ID, ""); err != nil {
			return err
		}
		v.State = api.StateStopped
		out = d.toAPI(v)
		return nil
	})
	return out, err
}

// KillVM ends the VMM at once.
func (d *Daemon) KillVM(ctx context.Context, ref string) (api.VM, error) {
	var out api.VM
	err := d.withVM(ctx, ref, func(v store.VM) error {
		if err := d.killLocked(ctx, v); err != nil {
			return err
		}
		v.State = api.StateStopped
		out = d.toAPI(v)
		return nil
	})
	return out, err
}

func (d *Daemon) killLocked(ctx context.Context, v store.VM) error {
	drv, err := d.driverFor(v)
	if err != nil {
		return err
	}
	if h, ok := d.liveHandle(drv, v.ID); ok {
		if err := drv.Kill(ctx, h); err != nil {
			return fmt.Errorf("kill vm %q: %w", v.Name, err)
		}
	}
	return d.markStopped(ctx, v.ID, "")
}

func (d *Daemon) markStopped(ctx context.Context, id, lastErr string) error {
	d.releaseForwards(ctx, id) // forwards.go: records, then listeners
	d.guests.drop(id)
	if v, err := d.store.GetVM(ctx, id); err == nil {
		if drv, err := d.driverFor(v); err == nil {
			d.releaseVMM(drv, v.Name)
		}
		if err := d.netDown(ctx, v); err != nil {
			return fmt.Errorf("detach vm %q from the network: %w", v.Name, err)
		}
	}
	if err := d.removeHandle(id); err != nil {
		return err
	}
	_ = os.RemoveAll(d.layout.VMRunDir(id))
	return d.store.SetVMState(ctx, id, api.StateStopped, lastErr)
}

// DeleteVM kills the VM if it runs and removes everything it held.
func (d *Daemon) DeleteVM(ctx context.Context, ref string) error {
	return d.withVM(ctx, ref, func(v store.VM) error {
		if v.State == api.StateCreating {
			return fmt.Errorf("vm %q is being created; cancel its operation first: %w", v.Name, api.ErrConflict)
		}
		return d.destroyLocked(ctx, v)
	})
}

// liveHandle returns the VM's VMM handle if that VMM is alive: from
// handles.json, or, where the driver can, found from the VM's runtime
// directory (a crash right after Start, before the handle was recorded).
// drv is the VM's driver (driverFor).
func (d *Daemon) liveHandle(drv vmm.Driver, id string) (vmm.Handle, bool) {
	if h, err := d.readHandle(id); err == nil && drv.Alive(h) {
		return h, true
	}
	if f, ok := drv.(vmm.Finder); ok {
		if h, ok := f.Find(d.layout.VMRunDir(id)); ok && drv.Alive(h) {
			return h, true
		}
	}
	return vmm.Handle{}, false
}

func (d *Daemon) destroyLocked(ctx context.Context, v store.VM) error {
	drv, err := d.driverFor(v)
	if err != nil {
		return err
	}
	if h, ok := d.liveHandle(drv, v.ID); ok {
		if err := drv.Kill(ctx, h); err != nil {
			return fmt.Errorf("kill vm %q: %w", v.Name, err)
		}
	}
	d.releaseVMM(drv, v.Name)
	d.releaseForwards(ctx, v.ID) // forwards.go: records, then listeners
	d.guests.drop(v.ID)
	if err := d.netForget(ctx, v); err != nil {
		return fmt.Errorf("detach vm %q from the network: %w", v.Name, err)
	}
	if err := errors.Join(os.RemoveAll(d.layout.VMRunDir(v.ID)), os.RemoveAll(d.layout.VMDir(v.ID))); err != nil {
		return fmt.Errorf("remove vm %q files: %w", v.Name, err)
	}
	if err := d.store.DeleteVM(ctx, v.ID); err != nil {
		return err
	}
	d.vmLocks.forget(v.ID)
	d.log(ctx).Info("vm deleted", "vm", v.Name, "vm_id", v.ID)
	return nil
}

// Handlers.

func (d *Daemon) handleCreateVM(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateVMRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	op, err := d.CreateVM(r.Context(), req)
	if err != nil {
		return err
	}
	return acceptedOp(w, op)
}

func (d *Daemon) handleListVMs(w http.ResponseWriter, r *http.Request) error {
	vms, err := d.store.ListVMs(r.Context())
	if err != nil {
		return err
	}
	out := make([]api.VM, 0, len(vms))
	for _, v := range vms {
		out = append(out, d.toAPI(v))
	}
	return writeJSON(w, http.StatusOK, out)
}

func (d *Daemon) handleGetVM(w http.ResponseWriter, r *http.Request) error {
	v, err := d.store.GetVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	out := d.toAPI(v)
	out.Workspace = d.workspaceOf(r.Context(), v.ID)
	return writeJSON(w, http.StatusOK, out)
}

func (d *Daemon) handleDeleteVM(w http.ResponseWriter, r *http.Request) error {
	if err := d.DeleteVM(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (d *Daemon) handleVMAction(w http.ResponseWriter, r *http.Request) error {
	var (
		vm  api.VM
		err error
	)
	name := r.PathValue("name")
	switch r.PathValue("action") {
	case "start":
		vm, err = d.StartVM(r.Context(), name)
	case "stop":
		vm, err = d.StopVM(r.Context(), name)
	case "kill":
		vm, err = d.KillVM(r.Context(), name)
	default:
		err = api.Errorf(api.ErrNotFound, "no vm action %q (want start, stop or kill)", r.PathValue("action"))
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, vm)
}

func (d *Daemon) handleVMSSH(w http.ResponseWriter, r *http.Request) error {
	v, err := d.store.GetVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	dir := d.layout.VMDir(v.ID)
	hostPEM, err := os.ReadFile(filepath.Join(dir, paths.VMHostKey))
	if err != nil {
		return fmt.Errorf("read host key: %w", err)
	}
	hs, err := ssh.ParsePrivateKey(hostPEM)
	if err != nil {
		return err
	}
	client, err := os.ReadFile(filepath.Join(dir, paths.VMClientKey))
	if err != nil {
		return fmt.Errorf("read client key: %w", err)
	}
	return writeJSON(w, http.StatusOK, api.SSHCredentials{User: "root",
		HostPublicKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hs.PublicKey()))), ClientKey: string(client)})
}

// handleVMConnect upgrades the request to a raw stream spliced to a new
// stream to the VM agent's SSH server. The client runs SSH over it.
func (d *Daemon) handleVMConnect(w http.ResponseWriter, r *http.Request) error {
	v, err := d.store.GetVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	if err := requireState(v, "connect to", api.StateRunning); err != nil {
		return err
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), api.UpgradeProtocol) {
		return api.Errorf(api.ErrBadRequest, "connect needs `Upgrade: %s`", api.UpgradeProtocol)
	}
	h, err := d.readHandle(v.ID)
	if err != nil {
		return fmt.Errorf("vm %q has no live handle: %w", v.Name, api.ErrUnavailable)
	}
	gc, err := d.guests.get(v.ID, h, d.layout.VMDir(v.ID), d.logger)
	if err != nil {
		return err
	}
	octx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	stream, err := gc.channel.Open(octx)
	cancel()
	if err != nil {
		return fmt.Errorf("open a stream to vm %q's agent: %v: %w", v.Name, err, api.ErrUnavailable)
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		stream.Close()
		return errHijack
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		stream.Close()
		return err
	}
	_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + api.UpgradeProtocol + "\r\n\r\n")
	if err := brw.Flush(); err != nil {
		conn.Close()
		stream.Close()
		return nil
	}
	go splice(conn, brw.Reader, stream)
	return nil
}
