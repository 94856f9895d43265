package qemu

import (
	"context"
	"time"

	"github.com/kilnvm/kiln/internal/vmm"
)

// Alive implements vmm.Driver: the pid exists, is not a zombie, and started
// when h says, so a recycled pid is never taken for the VMM.
func (d *Driver) Alive(h vmm.Handle) bool { return vmm.Alive(h) }

// ladder is the stop ladder: QMP system_powerdown (the ACPI power button;
// best effort), then SIGTERM (QEMU exits cleanly), then SIGKILL.
func (d *Driver) ladder() *vmm.Ladder {
	return &vmm.Ladder{VMM: "qemu", AskWhat: "qmp system_powerdown",
		Ask: func(ctx context.Context, h vmm.Handle, timeout time.Duration) error {
			_, err := qmpRun(ctx, h.APISocket, timeout, "system_powerdown")
			return err
		},
		TermWait: d.termWait, KillWait: d.killWait, Children: &d.children, Log: d.log}
}

// Stop implements vmm.Driver with the ladder: power button, wait up to
// grace; SIGTERM, wait; SIGKILL, wait (see vmm.Ladder.Stop).
func (d *Driver) Stop(ctx context.Context, h vmm.Handle, grace time.Duration) error {
	return d.ladder().Stop(ctx, h, grace)
}

// Kill implements vmm.Driver: SIGKILL, then wait until the process is gone.
func (d *Driver) Kill(ctx context.Context, h vmm.Handle) error {
	return d.ladder().Kill(ctx, h)
}
