// Package paths names every directory and file kiln keeps on the host, so
// the layout can be read in one place (and documented from it).
package paths

import "path/filepath"

// Layout is the set of top-level directories. Tests point all three at a
// temporary directory; the system daemon uses the defaults.
type Layout struct {
	StateDir string // durable: database, kernels, images, VM disks
	RunDir   string // runtime: API socket, VMM sockets (tmpfs, gone at reboot)
	CacheDir string // re-creatable: downloads
}

// Default is the system layout.
func Default() Layout {
	return Layout{StateDir: "/var/lib/kiln", RunDir: "/run/kiln", CacheDir: "/var/cache/kiln"}
}

// Socket is the daemon's API socket.
func (l Layout) Socket() string { return filepath.Join(l.RunDir, "kiln.sock") }

// PIDFile holds the daemon's pid while it runs.
func (l Layout) PIDFile() string { return filepath.Join(l.RunDir, "kiln.pid") }

// DaemonLog is where a daemon started in the background by the CLI logs.
func (l Layout) DaemonLog() string { return filepath.Join(l.StateDir, "daemon.log") }

// Database is the SQLite store.
func (l Layout) Database() string { return filepath.Join(l.StateDir, "kiln.db") }

// KernelsDir holds one directory per kernel.
func (l Layout) KernelsDir() string { return filepath.Join(l.StateDir, "kernels") }

// ImagesDir holds one directory per image.
func (l Layout) ImagesDir() string { return filepath.Join(l.StateDir, "images") }

// VMDir holds a VM's durable files (disks, keys, console log).
func (l Layout) VMDir(id string) string { return filepath.Join(l.StateDir, "vms", id) }

// VMRunDir holds a VM's runtime files (VMM sockets, pid file). It is kept
// short because Unix socket paths are limited to 107 bytes.
func (l Layout) VMRunDir(id string) string { return filepath.Join(l.RunDir, "vm", id) }

// Per-VM file names. Every file kiln writes in a VM's durable directory is
// named here (each VMM driver names the files of the runtime directory); the
// lists are in docs/architecture.md and docs_test.go checks them.
const (
	// In VMDir.
	VMRootDisk   = "root.ext4"    // copy-on-write clone of the image
	VMInitrd     = "initrd.img"   // base initramfs + agent + per-VM config cpio
	VMHostKey    = "host_key"     // the guest's SSH host key (private, 0600)
	VMClientKey  = "client_key"   // kiln's SSH client key for this VM (0600)
	VMHandles    = "handles.json" // live VMM handle; checked at daemon start
	VMSerialLog  = "console.log"  // the guest's serial console
	VMConfigJSON = "vm.json"      // the per-VM config as sent to the guest (no keys)
	VMCmdline    = "cmdline"      // the guest kernel command line of the last boot
)

// VMFiles lists the per-VM file names, for docs and tests.
func VMFiles() []string {
	return []string{VMRootDisk, VMInitrd, VMHostKey, VMClientKey, VMHandles, VMSerialLog, VMConfigJSON, VMCmdline}
}
