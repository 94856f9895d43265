package client

import (
	"context"
	"net/http"
	"strconv"

	"github.com/kilnvm/kiln/internal/api"
)

// VMPorts lists a VM's listening sockets with their endpoints.
func (c *Client) VMPorts(ctx context.Context, name string) (api.VMPorts, error) {
	var p api.VMPorts
	return p, c.json(ctx, http.MethodGet, fill(api.PathVMPorts, "name", name), nil, &p)
}

// AddForward forwards a host port (on 127.0.0.1) into a VM.
func (c *Client) AddForward(ctx context.Context, name string, req api.ForwardRequest) (api.Forward, error) {
	var f api.Forward
	return f, c.json(ctx, http.MethodPost, fill(api.PathVMForwards, "name", name), req, &f)
}

// Forwards lists a VM's forwards; name "" lists every VM's.
func (c *Client) Forwards(ctx context.Context, name string) ([]api.Forward, error) {
	var fs []api.Forward
	path := api.PathForwards
	if name != "" {
		path = fill(api.PathVMForwards, "name", name)
	}
	return fs, c.json(ctx, http.MethodGet, path, nil, &fs)
}

// RemoveForward removes the forward of a VM's host port.
func (c *Client) RemoveForward(ctx context.Context, name string, hostPort int) error {
	return c.json(ctx, http.MethodDelete, fill(api.PathVMForward, "name", name, "port", strconv.Itoa(hostPort)), nil, nil)
}
