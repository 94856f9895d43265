// Package daemon is kiln's composition root: it opens the store, picks the
// VMM driver and disk backend, reconciles what survived a restart, and
// serves the HTTP API on the Unix socket. Only internal/cli imports it.
// See ARCHITECTURE.md beside this file for the subsystems and lock order.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/kilnvm/kiln/internal/config"
	"github.com/kilnvm/kiln/internal/daemon/opstate"
	"github.com/kilnvm/kiln/internal/disk"
	"github.com/kilnvm/kiln/internal/image"
	"github.com/kilnvm/kiln/internal/kernel"
	"github.com/kilnvm/kiln/internal/lockorder"
	"github.com/kilnvm/kiln/internal/network"
	"github.com/kilnvm/kiln/internal/paths"
	"github.com/kilnvm/kiln/internal/store"
	"github.com/kilnvm/kiln/internal/system"
	"github.com/kilnvm/kiln/internal/vmm"
)

// Version is the kiln version, set at build time with -ldflags.
var Version = "dev"

// Daemon owns kiln's state on this host.
type Daemon struct {
	// Immutable after Open.
	cfg       config.Config
	layout    paths.Layout
	logger    *slog.Logger
	runner    system.Runner
	store     *store.Store
	kernels   *kernel.Store
	images    *image.Store
	disks     disk.Backend
	driver    vmm.Driver // the default VMM (config `vmm`); per-VM work uses driverFor
	drivers   driverSet  // every VMM that probed OK (drivers.go)
	agentPath string
	ops       *opstate.Registry
	listener  net.Listener
	server    *http.Server

	// Locks, outermost first: vmLocks[id] → {createVMMu, imageOpsMu} → the
	// leaves (ops, guests, vmLocks.mu). See ARCHITECTURE.md.
	// Checked in tests and with KILN_LOCKCHECK=1 (lockorder.go).
	vmLocks    vmLockSet
	createVMMu lockorder.Mutex // serialises name reservation of VM creates
	imageOpsMu lockorder.Mutex // serialises image and kernel registry changes
	lockOrder  *lockorder.Order
	guests     guestPool  // owns its own leaf lock
	fwd        forwardSet // port forwards (forwards.go); owns its own leaf locks
	// net is the VM network (network.go), nil when `network = false`;
	// it owns its own leaf locks (TAP pool, NAT, DNS records).
	net *network.Manager
	// userNet: the network is on in user mode (usernet.go); net is nil.
	userNet bool

	closeOnce sync.Once
	stopBg    context.CancelFunc
	bgDone    sync.WaitGroup
	bgCtx     context.Context // set by Serve, ended by Close before the server shuts down: ends log follows (logs.go)
}

// Options are the daemon's dependencies beyond its configuration.
type Options struct {
	Logger *slog.Logger
	Runner system.Runner
}

// Open prepares the daemon: directories, store, drivers, reconcile, and the
// API socket. It does not serve yet.
func Open(ctx context.Context, cfg config.Config, opts Options) (_ *Daemon, err error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.SlogLevel()}))
	}
	if opts.Runner == nil {
		opts.Runner = system.ExecRunner{}
	}
	l := cfg.Layout()
	for _, dir := range []string{l.StateDir, l.RunDir, l.CacheDir, l.KernelsDir(), l.ImagesDir(), filepath.Join(l.StateDir, "vms"), filepath.Join(l.RunDir, "vm")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, err)
		}
	}
	agentPath, err := FindAgent(cfg)
	if err != nil {
		return nil, err
	}
	order := daemonLockOrder(cfg.LockCheck) // lockorder.go
	d := &Daemon{cfg: cfg, layout: l, logger: opts.Logger, runner: opts.Runner, agentPath: agentPath,
		ops: opstate.NewChecked(time.Now, 15*time.Minute, order)}
	d.initLocks(order)
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if d.store, err = store.Open(ctx, l.Database()); err != nil {
		return nil, err
	}
	d.kernels = kernel.NewStore(l.KernelsDir(), d.runner, d.logger)
	d.kernels.SetLockOrder(order)
	if d.images, err = image.NewStore(l.ImagesDir(), d.runner, d.logger, agentPath, image.WithCacheDir(filepath.Join(l.CacheDir, "oci")), image.WithLockOrder(order)); err != nil {
		return nil, err
	}
	var probes []disk.ProbeResult
	d.disks, probes = disk.Choose(ctx, filepath.Join(l.StateDir, "vms"), disk.Reflink{}, disk.SparseCopy{})
	if d.disks == nil {
		return nil, fmt.Errorf("no disk backend works in %s: %v", l.StateDir, probes)
	}
	if d.drivers, err = pickDrivers(ctx, cfg, d.logger, d.kernels.ELFImage); err != nil {
		return nil, err
	}
	d.driver = d.drivers.def
	f := d.driver.Features()
	d.logger.Info("kiln daemon starting", "version", Version, "state_dir", l.StateDir, "vmm", d.driver.Name(), "vmms", d.drivers.names(),
		"accel", f.Accel, "channel", f.Channel, "disk_backend", d.disks.Name(), "agent", agentPath, "lockcheck", cfg.LockCheck)
	if f.AccelNote != "" {
		d.logger.Warn(f.AccelNote)
	}
	if err := d.openNetwork(ctx); err != nil {
		return nil, err
	}
	if err := d.reconcile(ctx); err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	if err := d.netReconcile(ctx); err != nil {
		return nil, fmt.Errorf("reconcile network: %w", err)
	}
	if d.listener, err = listen(ctx, cfg.SocketPath(), cfg.SocketGroup, d.logger); err != nil {
		return nil, err
	}
	// After listen: a second daemon refused above must not drop the
	// first one's forwards as "port in use".
	d.restoreForwards(ctx) // forwards.go; best effort, logs what it drops
	return d, nil
}

// FindAgent locates the kiln-agent binary injected into guests.
func FindAgent(cfg config.Config) (string, error) {
	cands := []string{}
	if cfg.AgentPath != "" {
		cands = append(cands, cfg.AgentPath)
	} else {
		if exe, err := os.Executable(); err == nil {
			cands = append(cands, filepath.Join(filepath.Dir(exe), "kiln-agent"))
		}
		cands = append(cands, "/usr/local/lib/kiln/kiln-agent", "/usr/lib/kiln/kiln-agent")
	}
	for _, c := range cands {
		if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() {
			return c, nil
		}
	}
	return "", fmt.Errorf("kiln-agent binary not found (looked in %v); build it with `make build` or set agent_path", cands)
}

// Serve answers API requests until ctx ends or Close is called.
func (d *Daemon) Serve(ctx context.Context) error {
	if err := os.WriteFile(d.layout.PIDFile(), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		d.logger.Warn("cannot write pid file", "err", err)
	}
	bg, stop := context.WithCancel(ctx)
	d.stopBg = stop
	d.bgCtx = bg
	d.bgDone.Add(1)
	go func() {
		defer d.bgDone.Done()
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-bg.Done():
				return
			case <-t.C:
				d.ops.Prune()
			}
		}
	}()
	d.server = &http.Server{
		Handler:           d.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey, peerOf(c))
		},
	}
	errc := make(chan error, 1)
	go func() { errc <- d.server.Serve(d.listener) }()
	d.logger.Info("serving", "socket", d.cfg.SocketPath())
	select {
	case <-ctx.Done():
		return d.Close()
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}

// Close stops serving. Running VMs keep running: their VMMs are detached,
// and the next daemon finds them again through reconcile.
func (d *Daemon) Close() error {
	var err error
	d.closeOnce.Do(func() {
		if d.stopBg != nil {
			d.stopBg()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if d.server != nil {
			_ = d.server.Shutdown(ctx)
		} else if d.listener != nil {
			d.listener.Close()
		}
		d.ops.CancelAll(ctx)
		d.bgDone.Wait()
		d.fwd.closeAll()
		d.guests.closeAll()
		_ = d.closeNetwork()
		if d.store != nil {
			err = d.store.Close()
		}
		if d.listener != nil {
			_ = os.Remove(d.cfg.SocketPath())
			_ = os.Remove(d.layout.PIDFile())
		}
	})
	return err
}
