// Package fcemu is a TEST-ONLY fake of Firecracker: an emulator of its
// REST API for hosts without Firecracker or KVM. It is never used in
// production; kiln's e2e suite points the firecracker driver at a binary
// built from fcemu/cmd/fcemu.
//
// It serves the API on a Unix socket, validates every request against the
// embedded official spec (paths, methods, required fields, types, enums,
// bounds, unknown fields), keeps Firecracker's pre-/post-InstanceStart
// state machine, and on InstanceStart boots the configured kernel, initrd
// and drives with QEMU (internal/vmm/qemu's Cmdline, TCG). The guest has
// no vsock device under QEMU, so the hybrid vsock socket is bridged to the
// agent's virtio-serial port: each `CONNECT <port>` becomes a new yamux
// stream on one serial connection, answered with `OK <n>`.
package fcemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/guest"
	"github.com/kilnvm/kiln/internal/vmm"
	"github.com/kilnvm/kiln/internal/vmm/qemu"
)

// Config configures an Emulator.
type Config struct {
	ID string // --id
	// WorkDir holds QEMU's sockets; it must be short (socket paths).
	WorkDir string
	// QEMU is the qemu-system-x86_64 binary; empty looks it up on PATH.
	QEMU string
	// Console receives the guest serial console (Firecracker's stdout).
	// A path, because QEMU opens it itself.
	Console string
	Logger  *slog.Logger
	// NoBoot makes InstanceStart succeed without starting QEMU (state
	// machine tests).
	NoBoot bool
}

// Emulator is one fake Firecracker process.
type Emulator struct {
	cfg  Config
	spec *Spec
	log  *slog.Logger
	// exited is closed when the guest (QEMU) is gone: the process ends.
	exited chan struct{}

	mu      sync.Mutex // guards everything below
	started bool
	paused  bool
	machine map[string]any
	boot    map[string]any
	drives  []map[string]any // in creation order
	nics    []map[string]any
	vsock   map[string]any
	logger  bool
	metrics bool
	qemu    *exec.Cmd
	qmp     string
	vsockL  net.Listener
	channel *guest.SerialChannel
	exitErr error
}

// New returns an emulator.
func New(cfg Config) (*Emulator, error) {
	spec, err := LoadSpec()
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Emulator{cfg: cfg, spec: spec, log: log, exited: make(chan struct{}),
		machine: map[string]any{"vcpu_count": json.Number("1"), "mem_size_mib": json.Number("128"), "smt": false}}, nil
}

// Exited is closed once the guest has stopped.
func (e *Emulator) Exited() <-chan struct{} { return e.exited }

// Err is why the guest stopped (nil: it powered off).
func (e *Emulator) Err() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.exitErr
}

// fault is an API error answer.
type fault struct {
	status int
	msg    string
}

func (f *fault) Error() string { return f.msg }

func badRequest(format string, args ...any) error {
	return &fault{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

// ServeHTTP implements http.Handler: validate, then apply.
func (e *Emulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeFault(w, badRequest("read body: %v", err))
		return
	}
	op, params, err := e.spec.ValidateRequest(r.Method, r.URL.Path, body)
	if err != nil {
		e.log.Warn("rejected request", "method", r.Method, "path", r.URL.Path, "err", err)
		writeFault(w, badRequest("%v", err))
		return
	}
	var v map[string]any
	if len(strings.TrimSpace(string(body))) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.UseNumber()
		_ = dec.Decode(&v) // validated above; non-objects leave v nil
	}
	out, err := e.apply(r.Context(), op.ID, params, v)
	if err != nil {
		e.log.Warn("request failed", "op", op.ID, "err", err)
		writeFault(w, err)
		return
	}
	if out == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

func writeFault(w http.ResponseWriter, err error) {
	f := &fault{http.StatusInternalServerError, err.Error()}
	errors.As(err, &f)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(f.status)
	_ = json.NewEncoder(w).Encode(map[string]string{"fault_message": f.msg})
}

// preBootOnly reports the operations Firecracker accepts only before
// InstanceStart; postBootOnly those only after.
func preBootOnly(op string) bool {
	switch op {
	case "putMachineConfiguration", "patchMachineConfiguration", "putGuestBootSource",
		"putGuestDriveByID", "putGuestNetworkInterfaceByID", "putGuestVsock",
		"putEntropyDevice", "putCpuConfiguration", "putSerialDevice", "putLogger", "putMetrics":
		return true
	}
	return false
}

func postBootOnly(op string) bool {
	switch op {
	case "patchGuestDriveByID", "patchGuestNetworkInterfaceByID", "patchVm":
		return true
	}
	return false
}

const (
	errPreBoot  = "The requested operation is not supported after starting the microVM."
	errPostBoot = "The requested operation is not supported before starting the microVM."
)

func (e *Emulator) apply(ctx context.Context, op string, params map[string]string, v map[string]any) (any, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if preBootOnly(op) && e.started {
		return nil, badRequest(errPreBoot)
	}
	if postBootOnly(op) && !e.started {
		return nil, badRequest(errPostBoot)
	}
	switch op {
	case "getFirecrackerVersion":
		return map[string]string{"firecracker_version": SpecVersion}, nil
	case "describeInstance":
		state := "Not started"
		if e.started {
			state = "Running"
			if e.paused {
				state = "Paused"
			}
		}
		return map[string]string{"app_name": "Firecracker", "id": e.cfg.ID, "state": state, "vmm_version": SpecVersion}, nil
	case "getMachineConfiguration":
		return e.machine, nil
	case "putMachineConfiguration":
		if n, _ := v["vcpu_count"].(json.Number).Int64(); v["smt"] == true && n > 1 && n%2 == 1 {
			return nil, badRequest("Invalid vCPU count: with SMT enabled the vCPU count must be 1 or even.")
		}
		e.machine = v
	case "patchMachineConfiguration":
		for k, x := range v {
			e.machine[k] = x
		}
	case "putGuestBootSource":
		e.boot = v
	case "putGuestDriveByID":
		if v["drive_id"] != params["drive_id"] {
			return nil, badRequest("The id from the path does not match the id from the body!")
		}
		if v["path_on_host"] == nil {
			return nil, badRequest("Unable to create the block device: path_on_host is required for a virtio block device")
		}
		return nil, e.putDevice(&e.drives, "drive_id", v)
	case "putGuestNetworkInterfaceByID":
		if v["iface_id"] != params["iface_id"] {
			return nil, badRequest("The id from the path does not match the id from the body!")
		}
		return nil, e.putDevice(&e.nics, "iface_id", v)
	case "putGuestVsock":
		e.vsock = v
	case "putEntropyDevice":
	case "putLogger":
		if e.logger {
			return nil, badRequest("Logger already initialized")
		}
		e.logger = true
	case "putMetrics":
		if e.metrics {
			return nil, badRequest("Reinitialization of metrics not allowed.")
		}
		e.metrics = true
	case "createSyncAction":
		return nil, e.action(ctx, v["action_type"].(string))
	case "patchVm":
		want := v["state"] == "Paused"
		cmd := "cont"
		if want {
			cmd = "stop"
		}
		if err := e.qmpLocked(ctx, cmd); err != nil {
			return nil, err
		}
		e.paused = want
	default:
		return nil, &fault{http.StatusBadRequest, fmt.Sprintf("kiln fcemu: %s is valid but not emulated", op)}
	}
	return nil, nil
}

// putDevice inserts or replaces a device by id, keeping order.
func (e *Emulator) putDevice(list *[]map[string]any, key string, v map[string]any) error {
	if key == "drive_id" && v["is_root_device"] == true {
		for _, d := range *list {
			if d["is_root_device"] == true && d[key] != v[key] {
				return badRequest("A root block device already exists!")
			}
		}
	}
	for i, d := range *list {
		if d[key] == v[key] {
			(*list)[i] = v
			return nil
		}
	}
	*list = append(*list, v)
	return nil
}

func (e *Emulator) action(ctx context.Context, a string) error {
	switch a {
	case "InstanceStart":
		if e.started {
			return badRequest(errPreBoot)
		}
		if e.boot == nil {
			return badRequest("Cannot start microvm without kernel configuration.")
		}
		if err := e.startLocked(ctx); err != nil {
			return &fault{http.StatusBadRequest, "Failed to start microVM: " + err.Error()}
		}
		e.started = true
	case "SendCtrlAltDel":
		if !e.started {
			return badRequest(errPostBoot)
		}
		// QEMU microvm has no i8042; the ACPI power button is the nearest
		// "ask the guest to stop".
		return e.qmpLocked(ctx, "system_powerdown")
	case "FlushMetrics":
		if !e.metrics {
			return badRequest("Metrics system not initialized")
		}
	}
	return nil
}

// vmSpec turns the configuration into a vmm.Spec for QEMU.
func (e *Emulator) vmSpecLocked() (vmm.Spec, error) {
	num := func(m map[string]any, k string) int {
		n, _ := m[k].(json.Number).Int64()
		return int(n)
	}
	str := func(m map[string]any, k string) string { s, _ := m[k].(string); return s }
	spec := vmm.Spec{Name: e.cfg.ID, Dir: e.cfg.WorkDir, CPUs: num(e.machine, "vcpu_count"),
		MemoryMiB: num(e.machine, "mem_size_mib"), Kernel: str(e.boot, "kernel_image_path"),
		Initrd: str(e.boot, "initrd_path"), Cmdline: str(e.boot, "boot_args"), SerialLog: e.cfg.Console}
	// Firecracker gives the root device vda; the others follow in order.
	for _, root := range []bool{true, false} {
		for _, d := range e.drives {
			if (d["is_root_device"] == true) == root {
				spec.Disks = append(spec.Disks, vmm.Disk{Path: str(d, "path_on_host"), ReadOnly: d["is_read_only"] == true})
			}
		}
	}
	for _, n := range e.nics {
		spec.NICs = append(spec.NICs, vmm.NIC{TAP: str(n, "host_dev_name"), MAC: str(n, "guest_mac")})
	}
	if spec.Name == "" {
		spec.Name = "fcemu"
	}
	for _, p := range append([]string{spec.Kernel, spec.Initrd}, diskPaths(spec)...) {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return spec, err
		}
	}
	return spec, nil
}

func diskPaths(s vmm.Spec) []string {
	var out []string
	for _, d := range s.Disks {
		out = append(out, d.Path)
	}
	return out
}

// startLocked boots QEMU and opens the hybrid vsock socket.
func (e *Emulator) startLocked(ctx context.Context) error {
	spec, err := e.vmSpecLocked()
	if err != nil {
		return err
	}
	var udsPath string
	if e.vsock != nil {
		udsPath, _ = e.vsock["uds_path"].(string)
	}
	if e.cfg.NoBoot {
		return e.listenVsockLocked(udsPath, nil)
	}
	if err := checkELFKernel(spec.Kernel); err != nil {
		return err
	}
	if err := os.MkdirAll(e.cfg.WorkDir, 0o700); err != nil {
		return err
	}
	paths := qemu.PathsFor(e.cfg.WorkDir)
	for _, p := range []string{paths.QMP, paths.Agent, paths.PIDFile} {
		os.Remove(p)
	}
	args := qemu.Cmdline(spec, paths, qemu.AccelTCG, vmm.ChannelSerial, qemu.Release{})
	bin := e.cfg.QEMU
	if bin == "" {
		bin = qemu.DefaultBinary
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	e.log.Info("starting qemu", "args", strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start qemu: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// QEMU is up once its sockets exist.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, e1 := os.Stat(paths.QMP)
		_, e2 := os.Stat(paths.Agent)
		if e1 == nil && e2 == nil {
			break
		}
		select {
		case err := <-done:
			return fmt.Errorf("qemu exited at start: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			return errors.New("qemu did not create its sockets within 30s")
		}
	}
	ch, err := guest.NewSerialChannel(guest.SerialConfig{SocketPath: paths.Agent, Logger: e.log})
	if err != nil {
		_ = cmd.Process.Kill()
		<-done
		return err
	}
	e.channel = ch
	if err := e.listenVsockLocked(udsPath, ch); err != nil {
		_ = cmd.Process.Kill()
		<-done
		return err
	}
	// Set only once e.exited is sure to close: Shutdown waits on it.
	e.qemu, e.qmp = cmd, paths.QMP
	go func() {
		err := <-done
		e.mu.Lock()
		e.exitErr = err
		if e.vsockL != nil {
			e.vsockL.Close()
		}
		e.channel.Close()
		e.mu.Unlock()
		e.log.Info("guest stopped", "qemu", err)
		close(e.exited)
	}()
	return nil
}

// Shutdown kills QEMU (if running) and waits until it is gone.
func (e *Emulator) Shutdown() {
	e.mu.Lock()
	cmd := e.qemu
	e.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-e.exited
}

// listenVsockLocked serves the hybrid vsock socket: each connection sends
// "CONNECT <port>\n"; the agent's port is bridged to a new stream on the
// serial channel and answered "OK <n>\n"; other ports are closed, as
// Firecracker does when no guest socket listens.
func (e *Emulator) listenVsockLocked(path string, ch *guest.SerialChannel) error {
	if path == "" {
		return nil
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("vsock: %w", err)
	}
	e.vsockL = l
	var hostPort uint32 = 1 << 30
	var portMu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			portMu.Lock()
			hostPort++
			n := hostPort
			portMu.Unlock()
			go e.bridge(c, ch, n)
		}
	}()
	return nil
}

func (e *Emulator) bridge(c net.Conn, ch *guest.SerialChannel, hostPort uint32) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := readLine(c)
	if err != nil {
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	port, ok := strings.CutPrefix(line, "CONNECT ")
	p, perr := strconv.ParseUint(port, 10, 32)
	if !ok || perr != nil {
		e.log.Warn("vsock: bad handshake", "line", line)
		return
	}
	if p != proto.VsockPort || ch == nil {
		e.log.Info("vsock: nothing listens on guest port", "port", p)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	stream, err := ch.Open(ctx)
	cancel()
	if err != nil {
		e.log.Warn("vsock: open agent stream", "err", err)
		return
	}
	defer stream.Close()
	if _, err := fmt.Fprintf(c, "OK %d\n", hostPort); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(stream, c); closeWrite(stream); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, stream); closeWrite(c); done <- struct{}{} }()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// readLine reads up to '\n' one byte at a time, so nothing after the
// handshake is consumed.
func readLine(r io.Reader) (string, error) {
	var b [1]byte
	var line []byte
	for len(line) < 64 {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return "", err
		}
		if b[0] == '\n' {
			return string(line), nil
		}
		line = append(line, b[0])
	}
	return "", errors.New("handshake line too long")
}

// qmpLocked runs one QMP command on QEMU.
func (e *Emulator) qmpLocked(ctx context.Context, command string) error {
	if e.cfg.NoBoot {
		return nil
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", e.qmp)
	if err != nil {
		return fmt.Errorf("qmp: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	if _, err := br.ReadBytes('\n'); err != nil { // greeting
		return fmt.Errorf("qmp: %w", err)
	}
	for _, cmd := range []string{"qmp_capabilities", command} {
		if _, err := fmt.Fprintf(c, `{"execute":%q}`+"\n", cmd); err != nil {
			return fmt.Errorf("qmp %s: %w", cmd, err)
		}
		for {
			line, err := br.ReadBytes('\n')
			if err != nil {
				return fmt.Errorf("qmp %s: %w", cmd, err)
			}
			var m map[string]json.RawMessage
			if json.Unmarshal(line, &m) != nil {
				continue
			}
			if _, ok := m["event"]; ok {
				continue
			}
			if msg, ok := m["error"]; ok {
				return fmt.Errorf("qmp %s: %s", cmd, msg)
			}
			break
		}
	}
	return nil
}

// Serve answers the API on l until ctx ends or the guest stops.
func (e *Emulator) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{Handler: e, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		select {
		case <-ctx.Done():
		case <-e.exited:
		}
		srv.Close()
	}()
	err := srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// WorkDirFor is the QEMU work directory kept beside an API socket.
func WorkDirFor(apiSock string) string { return filepath.Join(filepath.Dir(apiSock), "fcemu") }

// checkELFKernel refuses a kernel that is not an ELF vmlinux, as the
// emulated release does on x86_64: Firecracker up to 1.16 loads ELF only
// (bzImage support is firecracker-microvm/firecracker#6037, merged after
// 1.16.1). The wording follows Firecracker's kernel loader error
// (approximate: it is not copied from a live Firecracker).
func checkELFKernel(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil || string(magic[:]) != "\x7fELF" {
		return errors.New("Cannot load kernel due to invalid memory configuration or invalid kernel image: Kernel Loader: failed to load ELF kernel image: Invalid Elf magic number")
	}
	return nil
}
