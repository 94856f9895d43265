package agent

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/kilnvm/kiln/internal/agent/proto"
	"github.com/kilnvm/kiln/internal/api"
)

// ImageInit is the init the image mode executes.
const ImageInit = "/sbin/init"

// Decision is what init mode does with a mounted root.
type Decision struct {
	// Mode is proto.InitImage or proto.InitAgent.
	Mode string
	// Init is where ImageInit resolves inside the root ("" when it does
	// not), for the console line.
	Init string
	// Reason says why, for the console line.
	Reason string
}

// DecideInit decides between the image's init and the agent as PID 1 for
// the root filesystem mounted at root. It only reads root; symbolic links
// are followed inside root, never into the running system.
func DecideInit(mode, root string) (Decision, error) {
	init, initErr := ResolveIn(root, ImageInit)
	switch mode {
	case proto.InitAgent:
		return Decision{Mode: proto.InitAgent, Init: init, Reason: "init=agent"}, nil
	case proto.InitImage:
		if initErr != nil {
			return Decision{}, fmt.Errorf("init=image but the image has no usable %s: %w", ImageInit, initErr)
		}
		return Decision{Mode: proto.InitImage, Init: init, Reason: "init=image"}, nil
	case proto.InitAuto, "":
	default:
		return Decision{}, fmt.Errorf("init mode %q: want %q, %q or %q: %w", mode, proto.InitAuto, proto.InitAgent, proto.InitImage, api.ErrBadRequest)
	}
	if initErr != nil {
		return Decision{Mode: proto.InitAgent, Reason: fmt.Sprintf("no usable %s (%v)", ImageInit, initErr)}, nil
	}
	if !strings.Contains(init, "systemd") {
		return Decision{Mode: proto.InitAgent, Init: init, Reason: fmt.Sprintf("%s is %s, not systemd", ImageInit, init)}, nil
	}
	if _, err := os.Stat(filepath.Join(root, proto.SystemdUnitPath)); err != nil {
		return Decision{Mode: proto.InitAgent, Init: init, Reason: fmt.Sprintf("systemd image without %s", proto.SystemdUnitPath)}, nil
	}
	return Decision{Mode: proto.InitImage, Init: init, Reason: "systemd image with the kiln unit"}, nil
}

// maxSymlinks bounds link resolution, as the kernel's ELOOP limit does.
const maxSymlinks = 40

// ResolveIn resolves name (an absolute path inside root) to the regular
// file it designates, following symbolic links as if root were "/": an
// absolute target starts again at root and ".." never leaves it. It returns
// the resolved path as seen inside root.
func ResolveIn(root, name string) (string, error) {
	// pending holds the components still to walk; resolved the real path
	// walked so far (inside root).
	pending := splitPath(name)
	resolved := "/"
	links := 0
	for len(pending) > 0 {
		c := pending[0]
		pending = pending[1:]
		switch c {
		case ".":
			continue
		case "..":
			resolved = path.Dir(resolved)
			continue
		}
		next := path.Join(resolved, c)
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			return "", fmt.Errorf("%s: %w", next, err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			resolved = next
			continue
		}
		links++
		if links > maxSymlinks {
			return "", fmt.Errorf("%s: too many levels of symbolic links", name)
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", fmt.Errorf("%s: %w", next, err)
		}
		if strings.HasPrefix(target, "/") {
			resolved = "/"
		}
		pending = append(splitPath(target), pending...)
	}
	fi, err := os.Stat(filepath.Join(root, resolved))
	if err != nil {
		return "", fmt.Errorf("%s: %w", resolved, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s: not a regular file", resolved)
	}
	if fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s: not executable", resolved)
	}
	return resolved, nil
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}
