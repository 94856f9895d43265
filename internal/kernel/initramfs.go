package kernel

import (
	"context"
	"fmt"
	"io"
	"path"
	"path/filepath"
	"strings"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/cpio"
)

// InitramfsModulePath is where a module file lives inside the base
// initramfs: its place under lib/modules/<release>, uncompressed.
func InitramfsModulePath(release string, m Module) string {
	return path.Join("/lib/modules", release, uncompressedName(m.File))
}

// writeInitramfs writes the base initramfs: the modules, uncompressed, at
// their usual paths, and proto.ModulesListPath listing them in load
// order. It holds no /init: the daemon appends the agent and the per-VM
// config as a second archive.
func writeInitramfs(ctx context.Context, out io.Writer, modulesDir, release string, mods []Module) error {
	w := cpio.NewWriter(out)
	var list strings.Builder
	for _, m := range mods {
		if err := ctx.Err(); err != nil {
			return err
		}
		dst := InitramfsModulePath(release, m)
		data, err := readModuleFile(filepath.Join(modulesDir, filepath.FromSlash(m.File)))
		if err != nil {
			return fmt.Errorf("module %s: %w", m.Name, err)
		}
		if err := w.MkdirAll(path.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := w.WriteFile(dst, 0o644, data); err != nil {
			return err
		}
		list.WriteString(dst + "\n")
	}
	if err := w.MkdirAll(path.Dir(proto.ModulesListPath), 0o755); err != nil {
		return err
	}
	if err := w.WriteFile(proto.ModulesListPath, 0o644, []byte(list.String())); err != nil {
		return err
	}
	return w.Close()
}
