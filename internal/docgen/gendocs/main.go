// Command gendocs writes kiln's generated reference documents (cli.md and
// api.md) into the directory it is given: `make docs` runs it on docs/.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/kilnvm/kiln/internal/cli"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gendocs DIR")
		os.Exit(2)
	}
	written, err := write(os.Args[1], cli.Reference())
	for _, path := range written {
		fmt.Println("wrote", path)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}

// write puts each document into dir, in name order, and returns the paths
// it wrote.
func write(dir string, docs map[string][]byte) ([]string, error) {
	names := make([]string, 0, len(docs))
	for name := range docs {
		names = append(names, name)
	}
	sort.Strings(names)
	var written []string
	for _, name := range names {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, docs[name], 0o644); err != nil {
			return written, fmt.Errorf("write %s: %w", path, err)
		}
		written = append(written, path)
	}
	return written, nil
}
