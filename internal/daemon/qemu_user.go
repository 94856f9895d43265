package daemon

import (
	"fmt"
	"os/user"
	"strconv"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/config"
	"github.com/kilnvm/kiln/internal/vmm"
)

// qemuRunAs sets the user and group a VM's QEMU drops to (qemu_uid and
// qemu_gid; 0 and 0 leave it root). Only the QEMU driver reads
// Spec.RunAsUID/GID; Firecracker drops privileges through its jailer
// (jailer_uid, jailer_gid), so other drivers' specs are left alone.
//
// QEMU opens its disks, TAP, console file and listening sockets as root
// and drops privileges before its main loop, so the runtime directory and
// the VM's files stay root's (0700/0600): the unprivileged QEMU reopens
// none of them, and only root (the daemon) can connect to its QMP and
// agent sockets or signal it.
func qemuRunAs(cfg config.Config, driver string, spec *vmm.Spec) {
	if driver == "qemu" {
		spec.RunAsUID, spec.RunAsGID = cfg.QEMUUID, cfg.QEMUGID
	}
}

// qemuUserCheck is `kiln doctor`'s line on who QEMU runs as.
func qemuUserCheck(cfg config.Config) api.Check {
	c := api.Check{Name: "qemu user"}
	if cfg.QEMUUID == 0 && cfg.QEMUGID == 0 {
		c.Status = "info"
		c.Detail = "QEMU runs as root; to run it unprivileged once it has opened its disks, TAPs and sockets, set qemu_uid and qemu_gid (docs/configuration.md)"
		return c
	}
	c.Status = "pass"
	c.Detail = fmt.Sprintf("QEMU runs as uid %d%s, gid %d%s (it drops root after opening its disks, TAPs and sockets)",
		cfg.QEMUUID, userName(cfg.QEMUUID), cfg.QEMUGID, groupName(cfg.QEMUGID))
	return c
}

// userName is " (name)" when the host names uid, else "".
func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return " (" + u.Username + ")"
	}
	return ""
}

// groupName is " (name)" when the host names gid, else "".
func groupName(gid int) string {
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		return " (" + g.Name + ")"
	}
	return ""
}
