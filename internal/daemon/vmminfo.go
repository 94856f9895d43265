package daemon

// The VMM list of GET /v1/version: every known driver, usable or not,
// with its version and, when it is not usable, why.

import (
	"context"
	"strings"
	"time"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/vmm"
	"github.com/kilnvm/kiln/internal/vmm/firecracker"
	"github.com/kilnvm/kiln/internal/vmm/qemu"
)

// driverVersions reads the version of each usable driver once (at
// pickDrivers), so GET /v1/version — which every CLI command calls — runs
// no VMM binary. A driver whose version cannot be read is left out.
func driverVersions(ctx context.Context, usable map[string]vmm.Driver) map[string]string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out := map[string]string{}
	for name, drv := range usable {
		switch d := drv.(type) {
		case *qemu.Driver:
			if v, err := d.Version(ctx); err == nil {
				out[name] = v
			}
		case *firecracker.Driver:
			if r, err := d.Version(ctx); err == nil {
				out[name] = r.String()
			}
		}
	}
	return out
}

// vmmInfo lists every known VMM in vmmNames order, then any other driver
// the set holds, as GET /v1/version reports them.
func (s driverSet) vmmInfo() []api.VMMInfo {
	names := vmmNames()
	seen := map[string]bool{}
	for _, n := range names {
		seen[n] = true
	}
	for _, n := range s.names() {
		if !seen[n] {
			names, seen[n] = append(names, n), true
		}
	}
	out := make([]api.VMMInfo, 0, len(names))
	for _, n := range names {
		info := api.VMMInfo{Name: n, Version: s.versions[n]}
		if drv, ok := s.usable[n]; ok {
			info.Usable = true
			info.Default = s.def != nil && s.def.Name() == drv.Name()
		} else if why, ok := s.down[n]; ok {
			info.Reason = why.Error()
		} else {
			info.Reason = "not probed by this daemon"
		}
		out = append(out, info)
	}
	return out
}

// VMMSummary renders a daemon's VMM list on one line, e.g.
// "qemu 7.2.22 (default); firecracker not usable: binary not found".
func VMMSummary(vs []api.VMMInfo) string {
	parts := make([]string, 0, len(vs))
	for _, v := range vs {
		p := v.Name
		if v.Version != "" {
			p += " " + v.Version
		}
		switch {
		case v.Default:
			p += " (default)"
		case !v.Usable:
			p += " not usable"
			if v.Reason != "" {
				p += ": " + firstLine(v.Reason)
			}
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return "no VMM list (older daemon)"
	}
	return strings.Join(parts, "; ")
}

// versionReply is GET /v1/version's body for this daemon.
func (d *Daemon) versionReply(pid int) api.Version {
	f := d.driver.Features()
	return api.Version{Version: Version, PID: pid, VMM: d.driver.Name(), Accel: f.Accel, Note: f.AccelNote,
		VMMs: d.drivers.vmmInfo()}
}
