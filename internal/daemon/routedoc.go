package daemon

import "strings"

// RouteDoc describes one route of the API table for the generated
// reference (docs/api.md): method, path pattern and access rule.
type RouteDoc struct {
	Method, Path, Access string
}

// RouteDocs lists the routes of the daemon's table in its order. It reads
// the same table the server registers, so the documentation cannot list a
// route the daemon does not serve, or miss one.
func RouteDocs() []RouteDoc {
	var out []RouteDoc
	for _, rt := range (&Daemon{}).routes() {
		method, path, _ := strings.Cut(rt.pattern, " ")
		acc := "read"
		if rt.access == write {
			acc = "write"
		}
		out = append(out, RouteDoc{Method: method, Path: path, Access: acc})
	}
	return out
}
