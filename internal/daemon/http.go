package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/daemon/opstate"
)

// access is what a route needs from its caller.
type access int

const (
	read access = iota
	write
)

// route is one entry of the API table: pattern, handler and access rule
// side by side, so authorisation is read where the route is declared.
type route struct {
	pattern string // "METHOD /path"
	access  access
	handle  func(w http.ResponseWriter, r *http.Request) error
}

func (d *Daemon) routes() []route {
	return []route{
		{"GET " + api.PathVersion, read, d.handleVersion},
		{"GET " + api.PathVMs, read, d.handleListVMs},
		{"POST " + api.PathVMs, write, d.handleCreateVM},
		{"GET " + api.PathVM, read, d.handleGetVM},
		{"DELETE " + api.PathVM, write, d.handleDeleteVM},
		{"POST " + api.PathVMAction, write, d.handleVMAction},
		{"GET " + api.PathVMLogs, read, d.handleVMLogs},
		{"GET " + api.PathVMSSH, write, d.handleVMSSH},
		{"POST " + api.PathVMConnect, write, d.handleVMConnect},
		{"PUT " + api.PathVMWorkspace, write, d.handleSetWorkspace},
		{"GET " + api.PathVMPorts, read, d.handleVMPorts},
		{"GET " + api.PathVMForwards, read, d.handleListVMForwards},
		{"POST " + api.PathVMForwards, write, d.handleAddForward},
		{"DELETE " + api.PathVMForward, write, d.handleRemoveForward},
		{"GET " + api.PathForwards, read, d.handleListForwards},
		{"GET " + api.PathOperations, read, d.handleListOps},
		{"GET " + api.PathOperation, read, d.handleGetOp},
		{"POST " + api.PathOpCancel, write, d.handleCancelOp},
		{"GET " + api.PathKernels, read, d.handleListKernels},
		{"POST " + api.PathKernels, write, d.handleImportKernel},
		{"POST " + api.PathKernelPull, write, d.handlePullKernel},
		{"GET " + api.PathKernel, read, d.handleGetKernel},
		{"DELETE " + api.PathKernel, write, d.handleDeleteKernel},
		{"GET " + api.PathImages, read, d.handleListImages},
		{"POST " + api.PathImages, write, d.handleImportImageDir},
		{"POST " + api.PathImageTar, write, d.handleImportImageTar},
		{"POST " + api.PathImageBuild, write, d.handleBuildImage},
		{"POST " + api.PathImagePull, write, d.handlePullImage},
		{"GET " + api.PathImageCatalog, read, d.handleImageCatalog},
		{"POST " + api.PathImagePrune, write, d.handlePruneImageCache},
		{"POST " + api.PathImageRegister, write, d.handleRegisterImage}, // image_register.go
		{"POST " + api.PathImagePromote, write, d.handlePromoteImage},
		{"GET " + api.PathImage, read, d.handleGetImage},
		{"DELETE " + api.PathImage, write, d.handleDeleteImage},
	}
}

type ctxKey int

const (
	opIDKey ctxKey = iota
	peerKey
)

// peer is the caller on the Unix socket, from SO_PEERCRED.
type peer struct {
	uid, gid, pid int
	known         bool
}

func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range d.routes() {
		rt := rt
		mux.HandleFunc(rt.pattern, func(w http.ResponseWriter, r *http.Request) {
			opID := opstate.NewID()
			w.Header().Set(api.HeaderOpID, opID)
			w.Header().Set(api.HeaderAPIVersion, api.APIVersion)
			ctx := context.WithValue(r.Context(), opIDKey, opID)
			r = r.WithContext(ctx)
			log := d.logger.With("op_id", opID, "method", r.Method, "path", r.URL.Path)
			p, _ := r.Context().Value(peerKey).(peer)
			if err := authorize(p, rt.access); err != nil {
				writeError(w, err, opID)
				log.Warn("request refused", "uid", p.uid, "err", err)
				return
			}
			start := time.Now()
			err := rt.handle(w, r)
			if err != nil {
				writeError(w, err, opID)
				log.Info("request failed", "err", err, "class", api.ClassOf(err), "dur", time.Since(start))
				return
			}
			log.Debug("request", "uid", p.uid, "dur", time.Since(start))
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, fmt.Errorf("no route %s %s: %w", r.Method, r.URL.Path, api.ErrNotFound), "")
	})
	return mux
}

// authorize admits callers that passed the socket's permissions. The socket
// is 0660 root:kiln, so anyone here is root or in the kiln group; both may
// read and write. The check stays explicit so a read-only group can be
// added beside it.
func authorize(p peer, a access) error {
	if !p.known {
		return nil // not a Unix socket (tests with httptest); nothing to check
	}
	_ = a
	return nil
}

func peerOf(c net.Conn) peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return peer{}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return peer{}
	}
	var cred *syscall.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, _ = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if cred == nil {
		return peer{}
	}
	return peer{uid: int(cred.Uid), gid: int(cred.Gid), pid: int(cred.Pid), known: true}
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error, opID string) {
	ae := opstate.ToAPIError(err, opID, "")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ae.Class.HTTPStatus())
	_ = json.NewEncoder(w).Encode(map[string]any{"error": ae})
}

// decodeBody reads a JSON request body into v, refusing unknown fields and
// oversized bodies so a malformed request changes nothing.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed request body: %v: %w", err, api.ErrBadRequest)
	}
	return nil
}

func opID(ctx context.Context) string {
	id, _ := ctx.Value(opIDKey).(string)
	return id
}

// log is the daemon's logger with the request's operation id, so every
// line about one request can be found by its op_id.
func (d *Daemon) log(ctx context.Context) *slog.Logger {
	if id := opID(ctx); id != "" {
		return d.logger.With("op_id", id)
	}
	return d.logger
}

// listen opens the API socket: 0660, group kiln if that group exists,
// refusing to steal the socket of a daemon that still answers.
func listen(ctx context.Context, path, group string, logger *slog.Logger) (net.Listener, error) {
	if c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("another kiln daemon answers on %s: %w", path, api.ErrConflict)
	}
	_ = os.Remove(path)
	old := syscall.Umask(0o117)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if gid, ok := lookupGroup(group); ok {
		if err := os.Chown(path, 0, gid); err != nil {
			logger.Warn("cannot give the socket to its group", "group", group, "err", err)
		}
	}
	return l, nil
}

func lookupGroup(name string) (int, bool) {
	if name == "" {
		return 0, false
	}
	b, err := os.ReadFile("/etc/group")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 3 && f[0] == name {
			if gid, err := strconv.Atoi(f[2]); err == nil {
				return gid, true
			}
		}
	}
	return 0, false
}

// handleVersion answers who the daemon is.
func (d *Daemon) handleVersion(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, d.versionReply(os.Getpid())) // vmminfo.go
}

func (d *Daemon) handleListOps(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, d.ops.List())
}

func (d *Daemon) handleGetOp(w http.ResponseWriter, r *http.Request) error {
	wait, err := parseOpWait(r.URL.Query()) // opwait.go: long-poll
	if err != nil {
		return err
	}
	op, err := d.ops.Get(r.PathValue("id"))
	if err != nil {
		return err
	}
	d.waitOp(r, op, wait)
	return writeJSON(w, http.StatusOK, op.Snapshot())
}

func (d *Daemon) handleCancelOp(w http.ResponseWriter, r *http.Request) error {
	if err := d.ops.Cancel(r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// acceptedOp answers 202 with an operation's snapshot.
func acceptedOp(w http.ResponseWriter, op *opstate.Op) error {
	return writeJSON(w, http.StatusAccepted, op.Snapshot())
}

var errHijack = errors.New("connection does not support hijacking")
