package guest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"

	"golang.org/x/crypto/ssh"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/api"
)

// Ports asks the agent for the guest's listening TCP sockets.
func (c *Client) Ports(ctx context.Context) ([]proto.ListeningPort, error) {
	b, err := c.request(ctx, proto.RequestPorts, nil)
	if err != nil {
		return nil, err
	}
	var ps []proto.ListeningPort
	if err := json.Unmarshal(b, &ps); err != nil {
		return nil, fmt.Errorf("decode ports reply: %w", err)
	}
	return ps, nil
}

// DialGuest opens a TCP connection from inside the guest to host:port (an
// SSH direct-tcpip channel through the agent), so it works whether or not
// the guest has a network. A refusal by the guest (nothing listens there)
// is of class unavailable, as is a lost connection to the agent.
func (c *Client) DialGuest(ctx context.Context, host string, port int) (net.Conn, error) {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	for {
		cl, fresh, err := c.conn(ctx)
		if err != nil {
			return nil, err
		}
		conn, err := cl.DialContext(ctx, "tcp", addr)
		if err == nil {
			return conn, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("dial %s in the guest: %w", addr, ctxErr(ctx))
		}
		var oce *ssh.OpenChannelError
		if errors.As(err, &oce) {
			// The agent answered: the connection is fine, the dial not.
			return nil, fmt.Errorf("dial %s in the guest: %s: %w", addr, oce.Message, api.ErrUnavailable)
		}
		c.forget(cl)
		if !fresh {
			continue // a connection that died while idle: redial once
		}
		return nil, fmt.Errorf("dial %s in the guest: %v: %w", addr, err, api.ErrUnavailable)
	}
}
