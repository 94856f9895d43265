package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// qmpConn is a minimal QMP client: enough to check readiness and ask for
// an ACPI power-down. QMP is line-delimited JSON: a greeting, then one
// reply per command, with asynchronous events interleaved.
type qmpConn struct {
	c   net.Conn
	dec *json.Decoder
}

// qmpMessage is any message QEMU sends.
type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

// qmpRun connects to a QMP socket, reads the greeting, leaves capabilities
// negotiation mode and runs cmds in order, returning the last reply. The
// whole exchange is bounded by ctx and by timeout, whichever ends sooner.
//
// QEMU accepts a connection at the kernel level as soon as the socket
// listens, but greets only from its main loop, which starts after the
// machine is built: a reply therefore means the VM really started.
func qmpRun(ctx context.Context, path string, timeout time.Duration, cmds ...string) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	if err := c.SetDeadline(dl); err != nil {
		return nil, err
	}
	// Unblock reads at once when ctx is cancelled before its deadline.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	q := &qmpConn{c: c, dec: json.NewDecoder(c)}
	var greeting qmpMessage
	if err := q.dec.Decode(&greeting); err != nil {
		return nil, fmt.Errorf("read qmp greeting: %w", err)
	}
	if greeting.QMP == nil {
		return nil, fmt.Errorf("read qmp greeting: not a QMP greeting")
	}
	var ret json.RawMessage
	for _, cmd := range append([]string{"qmp_capabilities"}, cmds...) {
		if ret, err = q.execute(cmd); err != nil {
			return nil, err
		}
	}
	return ret, nil
}

// execute runs one command and returns its "return" value.
func (q *qmpConn) execute(cmd string) (json.RawMessage, error) {
	req, _ := json.Marshal(map[string]string{"execute": cmd})
	if _, err := q.c.Write(append(req, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		var m qmpMessage
		if err := q.dec.Decode(&m); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		switch {
		case m.Event != "":
			continue
		case m.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, m.Error.Class, m.Error.Desc)
		case m.Return != nil:
			return m.Return, nil
		}
	}
}
