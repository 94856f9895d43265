package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/kilnvm/kiln/internal/api"
)

// opPollWait is how long one long-poll of Wait holds its request.
const opPollWait = 25 * time.Second

// OperationAfter long-polls an operation: it returns as soon as the
// operation's version differs from after or it has ended, or when wait
// (at most api.MaxOpWait) has passed, then with the unchanged operation.
func (c *Client) OperationAfter(ctx context.Context, id string, after uint64, wait time.Duration) (api.Operation, error) {
	q := url.Values{api.QueryOpWait: {wait.String()}, api.QueryOpAfter: {strconv.FormatUint(after, 10)}}
	var op api.Operation
	return op, c.do(ctx, http.MethodGet, fill(api.PathOperation, "id", id), q, nil, "", &op)
}
