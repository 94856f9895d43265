package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/kilnvm/kiln/internal/api"
)

// StreamVMLogs copies the VM's console log to w as opts select. With
// opts.Follow it keeps copying what the guest writes until ctx ends (it
// then returns nil: the caller chose to stop) or the daemon ends the
// stream: the VM was deleted (an error of class not_found) or the daemon
// stopped (unavailable).
func (c *Client) StreamVMLogs(ctx context.Context, name string, opts api.LogsOptions, w io.Writer) error {
	q := url.Values{}
	if opts.Follow {
		q.Set(api.QueryLogsFollow, "1")
	}
	if opts.Tail >= 0 {
		q.Set(api.QueryLogsTail, strconv.Itoa(opts.Tail))
	}
	resp, err := c.send(ctx, http.MethodGet, fill(api.PathVMLogs, "name", name), q, nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 || !opts.Follow {
		return decode(resp, w)
	}
	_, err = io.Copy(w, resp.Body)
	if ctx.Err() != nil {
		return nil // interrupted by the caller: a normal end of following
	}
	if err != nil {
		return fmt.Errorf("follow the logs of vm %q: the stream broke (%v): %w", name, err, api.ErrUnavailable)
	}
	if t := resp.Trailer.Get(api.TrailerError); t != "" {
		var ae api.Error
		if json.Unmarshal([]byte(t), &ae) != nil {
			return &api.Error{Class: api.ClassInternal, Message: "follow logs: " + t}
		}
		return &ae
	}
	return fmt.Errorf("follow the logs of vm %q: the daemon ended the stream: %w", name, api.ErrUnavailable)
}
