package cli

import (
	"io"
	"strings"

	"github.com/kilnvm/kiln/internal/daemon"
	"github.com/kilnvm/kiln/internal/docgen"
)

// Reference returns kiln's generated reference documents, keyed by their
// file name under docs/: cli.md from the command tree and api.md from the
// daemon's route table and the error classes. `make docs` writes them.
func Reference() map[string][]byte {
	root := newRootCmd(&env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard})
	var routes []docgen.Route
	for _, r := range daemon.RouteDocs() {
		routes = append(routes, docgen.Route{Method: r.Method, Path: r.Path, Access: r.Access})
	}
	return map[string][]byte{
		"cli.md": docgen.CLI(root),
		"api.md": docgen.API(routes),
	}
}
