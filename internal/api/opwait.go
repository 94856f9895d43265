package api

import "time"

// Query parameters of GET PathOperation: a long-poll.
//
// Every operation carries a Version that grows by one on each change (a
// new stage, a detail/progress update, the end). With wait=D and
// after=V the daemon answers as soon as the operation's version differs
// from V or it has ended, or when D has passed (then with the unchanged
// operation); without them it answers at once. D is a Go duration in
// (0, MaxOpWait]; bad values are bad_request.
const (
	QueryOpWait  = "wait"  // e.g. "10s": how long to hold the request
	QueryOpAfter = "after" // the version the caller already has
	MaxOpWait    = 30 * time.Second
)
