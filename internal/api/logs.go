package api

// Query parameters of GET PathVMLogs and the trailer of a followed log.
//
// With follow=1 the daemon answers 200 at once and streams the console log
// (chunked) until the client goes away, the VM is deleted or the daemon
// stops. An error that ends the stream after the status was sent travels
// in the HTTP trailer TrailerError as a JSON Error (class not_found when
// the VM was deleted, unavailable when the daemon shut down).
const (
	QueryLogsFollow = "follow" // "1": keep streaming what the guest writes
	QueryLogsTail   = "tail"   // N >= 0: start with only the last N lines
	TrailerError    = "Kiln-Error"
)

// LogsOptions select what `GET PathVMLogs` returns.
type LogsOptions struct {
	Follow bool
	Tail   int // < 0: the whole log
}
