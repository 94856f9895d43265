// Package client is the typed Go client of the kiln daemon's HTTP API on
// its Unix socket. It turns wire errors back into *api.Error, so callers
// test classes with errors.Is(err, api.ErrNotFound).
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/kilnvm/kiln/internal/api"
)

// Client talks to one daemon socket.
type Client struct {
	socket string
	hc     *http.Client
}

// New makes a client for the daemon at socket.
func New(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns: 4,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Socket is the socket path this client dials.
func (c *Client) Socket() string { return c.socket }

// IsUnreachable reports whether err means no daemon answers on the socket.
func IsUnreachable(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}

func (c *Client) do(ctx context.Context, method, path string, query url.Values, body io.Reader, contentType string, out any) error {
	resp, err := c.send(ctx, method, path, query, body, contentType)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return decode(resp, out)
}

// send makes one request and returns the response unread, with the
// daemon-unreachable and permission errors classed and hinted.
func (c *Client) send(ctx context.Context, method, path string, query url.Values, body io.Reader, contentType string) (*http.Response, error) {
	u := "http://kiln" + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set(api.HeaderAPIVersion, api.APIVersion)
	resp, err := c.hc.Do(req)
	if err != nil {
		if IsUnreachable(err) {
			return nil, api.Hinted(fmt.Errorf("kiln daemon is not running (no answer on %s): %w", c.socket, api.ErrUnavailable),
				"start it with `sudo kiln daemon`, or run kiln as root to have it started for you")
		}
		if errors.Is(err, syscall.EACCES) {
			return nil, api.Hinted(fmt.Errorf("no permission to use the kiln socket %s: %w", c.socket, api.ErrPermissionDenied),
				"ask root to add you to the kiln group (`usermod -aG kiln $USER`), then log in again")
		}
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	return resp, nil
}

func decode(resp *http.Response, out any) error {
	if resp.StatusCode >= 400 {
		var env struct {
			Error *api.Error `json:"error"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &env) == nil && env.Error != nil {
			return env.Error
		}
		return &api.Error{Class: api.ClassInternal, Message: fmt.Sprintf("daemon answered %s: %s", resp.Status, strings.TrimSpace(string(b)))}
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if w, ok := out.(io.Writer); ok {
		_, err := io.Copy(w, resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (c *Client) json(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	return c.do(ctx, method, path, nil, body, "application/json", out)
}

func fill(pattern string, kv ...string) string {
	for i := 0; i+1 < len(kv); i += 2 {
		pattern = strings.Replace(pattern, "{"+kv[i]+"}", url.PathEscape(kv[i+1]), 1)
	}
	return pattern
}

// Version asks the daemon who it is.
func (c *Client) Version(ctx context.Context) (api.Version, error) {
	var v api.Version
	return v, c.json(ctx, http.MethodGet, api.PathVersion, nil, &v)
}

// CreateVM begins a VM create; follow the returned operation.
func (c *Client) CreateVM(ctx context.Context, req api.CreateVMRequest) (api.Operation, error) {
	var op api.Operation
	return op, c.json(ctx, http.MethodPost, api.PathVMs, req, &op)
}

// ListVMs lists every VM.
func (c *Client) ListVMs(ctx context.Context) ([]api.VM, error) {
	var vms []api.VM
	return vms, c.json(ctx, http.MethodGet, api.PathVMs, nil, &vms)
}

// GetVM returns one VM by name or id.
func (c *Client) GetVM(ctx context.Context, name string) (api.VM, error) {
	var vm api.VM
	return vm, c.json(ctx, http.MethodGet, fill(api.PathVM, "name", name), nil, &vm)
}

// SetWorkspace records the workspace copied into a VM.
func (c *Client) SetWorkspace(ctx context.Context, name string, ws api.Workspace) (api.Workspace, error) {
	var out api.Workspace
	return out, c.json(ctx, http.MethodPut, fill(api.PathVMWorkspace, "name", name), ws, &out)
}

// DeleteVM deletes a VM, killing it if it runs, and releases everything it held.
func (c *Client) DeleteVM(ctx context.Context, name string) error {
	return c.json(ctx, http.MethodDelete, fill(api.PathVM, "name", name), nil, nil)
}

// VMAction runs start, stop or kill on a VM and returns its new record.
func (c *Client) VMAction(ctx context.Context, name, action string) (api.VM, error) {
	var vm api.VM
	return vm, c.json(ctx, http.MethodPost, fill(api.PathVMAction, "name", name, "action", action), nil, &vm)
}

// SSHCredentials returns what a client needs to speak SSH to the VM's agent.
func (c *Client) SSHCredentials(ctx context.Context, name string) (api.SSHCredentials, error) {
	var cr api.SSHCredentials
	return cr, c.json(ctx, http.MethodGet, fill(api.PathVMSSH, "name", name), nil, &cr)
}

// Connect opens a raw byte stream to the VM agent's SSH server, through
// the daemon (an HTTP upgrade on the API socket).
func (c *Client) Connect(ctx context.Context, name string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		if IsUnreachable(err) {
			return nil, fmt.Errorf("kiln daemon is not running (no answer on %s): %w", c.socket, api.ErrUnavailable)
		}
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://kiln"+fill(api.PathVMConnect, "name", name), nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", api.UpgradeProtocol)
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("connect to vm %s: %w", name, err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("connect to vm %s: %w", name, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		defer resp.Body.Close()
		return nil, decode(resp, nil)
	}
	conn.SetDeadline(time.Time{})
	return &bufConn{Conn: conn, r: br}, nil
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// CloseWrite half-closes the stream, so the far end sees EOF.
func (b *bufConn) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Operations lists operations.
func (c *Client) Operations(ctx context.Context) ([]api.Operation, error) {
	var ops []api.Operation
	return ops, c.json(ctx, http.MethodGet, api.PathOperations, nil, &ops)
}

// Operation returns one operation.
func (c *Client) Operation(ctx context.Context, id string) (api.Operation, error) {
	var op api.Operation
	return op, c.json(ctx, http.MethodGet, fill(api.PathOperation, "id", id), nil, &op)
}

// CancelOperation asks a running operation to stop and roll back.
func (c *Client) CancelOperation(ctx context.Context, id string) error {
	return c.json(ctx, http.MethodPost, fill(api.PathOpCancel, "id", id), nil, nil)
}

// Wait long-polls an operation (OperationAfter) until it ends, calling
// progress (if not nil) whenever it changed. It returns the final operation, and its error as a
// Go error when it failed.
func (c *Client) Wait(ctx context.Context, op api.Operation, progress func(api.Operation)) (api.Operation, error) {
	last := ""
	for {
		if b, _ := json.Marshal(op.Stages); progress != nil && string(b)+op.State != last {
			last = string(b) + op.State
			progress(op)
		}
		if op.State != api.OpRunning {
			if op.Error != nil {
				return op, op.Error
			}
			return op, nil
		}
		next, err := c.OperationAfter(ctx, op.ID, op.Version, opPollWait)
		if err != nil && ctx.Err() != nil {
			return op, ctx.Err()
		} else if err != nil {
			return op, err
		}
		op = next
	}
}

// ListKernels lists kernels.
func (c *Client) ListKernels(ctx context.Context) ([]api.Kernel, error) {
	var ks []api.Kernel
	return ks, c.json(ctx, http.MethodGet, api.PathKernels, nil, &ks)
}

// GetKernel returns one kernel.
func (c *Client) GetKernel(ctx context.Context, name string) (api.Kernel, error) {
	var k api.Kernel
	return k, c.json(ctx, http.MethodGet, fill(api.PathKernel, "name", name), nil, &k)
}

// DeleteKernel removes a kernel.
func (c *Client) DeleteKernel(ctx context.Context, name string) error {
	return c.json(ctx, http.MethodDelete, fill(api.PathKernel, "name", name), nil, nil)
}

// ImportKernel begins a kernel import.
func (c *Client) ImportKernel(ctx context.Context, req api.ImportKernelRequest) (api.Operation, error) {
	var op api.Operation
	return op, c.json(ctx, http.MethodPost, api.PathKernels, req, &op)
}

// PullKernel begins a distribution kernel download and import.
func (c *Client) PullKernel(ctx context.Context, req api.PullKernelRequest) (api.Operation, error) {
	var op api.Operation
	return op, c.json(ctx, http.MethodPost, api.PathKernelPull, req, &op)
}

// ListImages lists images.
func (c *Client) ListImages(ctx context.Context) ([]api.Image, error) {
	var is []api.Image
	return is, c.json(ctx, http.MethodGet, api.PathImages, nil, &is)
}

// GetImage returns one image.
func (c *Client) GetImage(ctx context.Context, name string) (api.Image, error) {
	var i api.Image
	return i, c.json(ctx, http.MethodGet, fill(api.PathImage, "name", name), nil, &i)
}

// DeleteImage removes an image.
func (c *Client) DeleteImage(ctx context.Context, name string) error {
	return c.json(ctx, http.MethodDelete, fill(api.PathImage, "name", name), nil, nil)
}

// ImportImageDir begins an image import from a host directory.
func (c *Client) ImportImageDir(ctx context.Context, req api.ImportImageRequest) (api.Operation, error) {
	var op api.Operation
	return op, c.json(ctx, http.MethodPost, api.PathImages, req, &op)
}

// ImportImageTar streams a rootfs tarball to the daemon and waits for the
// image to be built.
func (c *Client) ImportImageTar(ctx context.Context, req api.ImportImageRequest, tar io.Reader) (api.Image, error) {
	q := url.Values{"name": {req.Name}}
	if req.Kernel != "" {
		q.Set("kernel", req.Kernel)
	}
	if req.Size != "" {
		q.Set("size", req.Size)
	}
	var img api.Image
	return img, c.do(ctx, http.MethodPost, api.PathImageTar, q, tar, "application/x-tar", &img)
}

// PullImage begins an OCI image pull (or a catalog image's build).
func (c *Client) PullImage(ctx context.Context, req api.PullImageRequest) (api.Operation, error) {
	var op api.Operation
	return op, c.json(ctx, http.MethodPost, api.PathImagePull, req, &op)
}

// RegisterImage records an unmanaged host rootfs as an image.
func (c *Client) RegisterImage(ctx context.Context, req api.RegisterImageRequest) (api.Image, error) {
	var img api.Image
	return img, c.json(ctx, http.MethodPost, api.PathImageRegister, req, &img)
}

// PromoteImage copies a registered image's rootfs into managed storage.
func (c *Client) PromoteImage(ctx context.Context, name string) (api.Image, error) {
	var img api.Image
	return img, c.json(ctx, http.MethodPost, fill(api.PathImagePromote, "name", name), nil, &img)
}

// ImageCatalog lists the images kiln can make by name.
func (c *Client) ImageCatalog(ctx context.Context) ([]api.CatalogImage, error) {
	var cat []api.CatalogImage
	return cat, c.json(ctx, http.MethodGet, api.PathImageCatalog, nil, &cat)
}

// PruneImageCache empties the OCI blob cache.
func (c *Client) PruneImageCache(ctx context.Context, req api.PruneCacheRequest) (api.PruneCacheResult, error) {
	var res api.PruneCacheResult
	return res, c.json(ctx, http.MethodPost, api.PathImagePrune, req, &res)
}

// BuildImage begins a debootstrap image build.
func (c *Client) BuildImage(ctx context.Context, req api.BuildImageRequest) (api.Operation, error) {
	var op api.Operation
	return op, c.json(ctx, http.MethodPost, api.PathImageBuild, req, &op)
}
