package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/kilnvm/kiln/internal/api"
)

// The request bodies below follow the definitions of Firecracker's API
// spec (firecracker-api-v1.16.1.yaml); field names are the spec's. Optional
// fields are pointers or omitempty so that an unset field is absent, never
// a zero the VMM would take literally.

// MachineConfig is the spec's MachineConfiguration.
type MachineConfig struct {
	VCPUCount  int  `json:"vcpu_count"`
	MemSizeMiB int  `json:"mem_size_mib"`
	SMT        bool `json:"smt"`
}

// BootSource is the spec's BootSource.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	InitrdPath      string `json:"initrd_path,omitempty"`
	BootArgs        string `json:"boot_args,omitempty"`
}

// TokenBucket is the spec's TokenBucket.
type TokenBucket struct {
	Size         int64  `json:"size"`
	OneTimeBurst *int64 `json:"one_time_burst,omitempty"`
	RefillTime   int64  `json:"refill_time"` // milliseconds
}

// RateLimiter is the spec's RateLimiter.
type RateLimiter struct {
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	Ops       *TokenBucket `json:"ops,omitempty"`
}

// Drive is the spec's Drive (virtio-block only).
type Drive struct {
	DriveID      string       `json:"drive_id"`
	PathOnHost   string       `json:"path_on_host"`
	IsRootDevice bool         `json:"is_root_device"`
	IsReadOnly   bool         `json:"is_read_only"`
	CacheType    string       `json:"cache_type,omitempty"` // "Unsafe" or "Writeback"
	RateLimiter  *RateLimiter `json:"rate_limiter,omitempty"`
}

// NetworkInterface is the spec's NetworkInterface.
type NetworkInterface struct {
	IfaceID       string       `json:"iface_id"`
	HostDevName   string       `json:"host_dev_name"`
	GuestMAC      string       `json:"guest_mac,omitempty"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// Vsock is the spec's Vsock: a hybrid vsock device whose host side is the
// Unix socket UDSPath.
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// EntropyDevice is the spec's EntropyDevice.
type EntropyDevice struct {
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// Logger is the spec's Logger.
type Logger struct {
	LogPath       string `json:"log_path"`
	Level         string `json:"level,omitempty"` // Error, Warning, Info, Debug, Trace, Off
	ShowLevel     bool   `json:"show_level"`
	ShowLogOrigin bool   `json:"show_log_origin"`
}

// Metrics is the spec's Metrics.
type Metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// Actions for PUT /actions (the spec's InstanceActionInfo.action_type).
const (
	ActionInstanceStart  = "InstanceStart"
	ActionSendCtrlAltDel = "SendCtrlAltDel"
	ActionFlushMetrics   = "FlushMetrics"
)

// InstanceAction is the spec's InstanceActionInfo.
type InstanceAction struct {
	ActionType string `json:"action_type"`
}

// VM states for PATCH /vm (the spec's Vm.state).
const (
	StatePaused  = "Paused"
	StateResumed = "Resumed"
)

// VMState is the spec's Vm.
type VMState struct {
	State string `json:"state"`
}

// InstanceInfo is the spec's InstanceInfo (GET /).
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"` // "Not started", "Running", "Paused"
	VMMVersion string `json:"vmm_version"`
}

// Request is one API call: the unit that Plan produces, the client sends,
// and the contract tests check against the spec.
type Request struct {
	Method string
	Path   string
	Body   any // nil: no body
}

func (r Request) String() string { return r.Method + " " + r.Path }

// Requests that are not part of a boot plan.
func ActionRequest(action string) Request {
	return Request{http.MethodPut, "/actions", InstanceAction{ActionType: action}}
}

// PauseRequest and ResumeRequest change a running VM's state.
func PauseRequest() Request  { return Request{http.MethodPatch, "/vm", VMState{State: StatePaused}} }
func ResumeRequest() Request { return Request{http.MethodPatch, "/vm", VMState{State: StateResumed}} }

// APIError is an error answer of the Firecracker API. Fault is
// Firecracker's fault_message, verbatim.
type APIError struct {
	Request string // "PUT /drives/root"
	Status  int
	Fault   string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("firecracker %s: %d %s: %s", e.Request, e.Status, http.StatusText(e.Status), e.Fault)
}

// Is classes a 4xx answer as bad_request: Firecracker refused what kiln
// asked for. Other answers stay unclassed (internal).
func (e *APIError) Is(target error) bool {
	return target == api.ErrBadRequest && e.Status >= 400 && e.Status < 500
}

// Client talks to one Firecracker process over its API socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the API socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true,
	}
	return &Client{socket: path, hc: &http.Client{Transport: tr}}
}

// Do sends r and decodes a JSON answer into out (when out is non-nil). A
// non-2xx answer is an *APIError carrying the request and fault_message.
func (c *Client) Do(ctx context.Context, r Request, out any) error {
	var body io.Reader
	if r.Body != nil {
		b, err := json.Marshal(r.Body)
		if err != nil {
			return fmt.Errorf("firecracker %s: encode: %w", r, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, "http://localhost"+r.Path, body)
	if err != nil {
		return fmt.Errorf("firecracker %s: %w", r, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s on %s: %w", r, c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("firecracker %s: read answer: %w", r, err)
	}
	if resp.StatusCode/100 != 2 {
		var fe struct {
			FaultMessage string `json:"fault_message"`
		}
		if json.Unmarshal(data, &fe) != nil || fe.FaultMessage == "" {
			fe.FaultMessage = string(bytes.TrimSpace(data))
		}
		return &APIError{Request: r.String(), Status: resp.StatusCode, Fault: fe.FaultMessage}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("firecracker %s: decode answer: %w", r, err)
		}
	}
	return nil
}

// Version returns GET /version's firecracker_version ("1.16.1").
func (c *Client) Version(ctx context.Context) (string, error) {
	var v struct {
		Version string `json:"firecracker_version"`
	}
	if err := c.Do(ctx, Request{http.MethodGet, "/version", nil}, &v); err != nil {
		return "", err
	}
	return v.Version, nil
}

// Describe returns GET /.
func (c *Client) Describe(ctx context.Context) (InstanceInfo, error) {
	var in InstanceInfo
	err := c.Do(ctx, Request{http.MethodGet, "/", nil}, &in)
	return in, err
}

// Action sends PUT /actions.
func (c *Client) Action(ctx context.Context, action string) error {
	return c.Do(ctx, ActionRequest(action), nil)
}

// Pause and Resume send PATCH /vm.
func (c *Client) Pause(ctx context.Context) error  { return c.Do(ctx, PauseRequest(), nil) }
func (c *Client) Resume(ctx context.Context) error { return c.Do(ctx, ResumeRequest(), nil) }

// WaitReady polls GET /version until the API answers, the deadline passes,
// or exited closes (the process died).
func (c *Client) WaitReady(ctx context.Context, timeout time.Duration, exited <-chan struct{}) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := c.Version(actx)
		cancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-exited:
			return errExited
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.Canceled) {
				return fmt.Errorf("wait for firecracker api: %w: %w", ctx.Err(), api.ErrCanceled)
			}
			return fmt.Errorf("wait for firecracker api: %w", ctx.Err())
		case <-deadline.C:
			return fmt.Errorf("firecracker api %s did not answer within %s: %w: %w", c.socket, timeout, last, api.ErrUnavailable)
		case <-tick.C:
		}
	}
}

// errExited tells WaitReady's caller that the process exited.
var errExited = errors.New("firecracker exited")
