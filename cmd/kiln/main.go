// Command kiln is the kiln CLI; `kiln daemon` runs the daemon.
package main

import (
	"os"

	"github.com/kilnvm/kiln/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
