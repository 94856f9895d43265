package daemon

import (
	"context"
	"path"
	"strings"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/image"
)

// applyImageRuntime puts the parts of an OCI image's recorded config that
// kiln honours into the per-VM agent config: Env is added to every
// command, WorkingDir is the default directory of commands and shells.
// User, Entrypoint and Cmd stay recorded only (see docs/decisions.md):
// the agent runs commands as root, and a VM runs what it is asked to run.
// A VM whose image is gone or unreadable boots without them, as before.
// It reads only the image's small image.json.
func (d *Daemon) applyImageRuntime(imageName string, cfg *proto.VMConfig) {
	img, err := d.images.Get(context.Background(), imageName)
	if err != nil {
		d.logger.Warn("image config not applied: image unreadable", "image", imageName, "err", err)
		return
	}
	cfg.Env, cfg.WorkDir = imageRuntime(img.Config)
}

// imageRuntime returns the Env entries and working directory the agent
// accepts from an image config, dropping what it would refuse (an entry
// that is not NAME=VALUE, a relative directory) rather than letting one
// odd image config make every VM of it unbootable.
func imageRuntime(c *image.RuntimeConfig) (env []string, workDir string) {
	if c == nil {
		return nil, ""
	}
	for _, kv := range c.Env {
		name, _, ok := strings.Cut(kv, "=")
		if ok && name != "" && !strings.ContainsRune(kv, 0) {
			env = append(env, kv)
		}
	}
	if w := c.WorkingDir; strings.HasPrefix(w, "/") && !strings.ContainsRune(w, 0) {
		workDir = path.Clean(w)
	}
	return env, workDir
}
