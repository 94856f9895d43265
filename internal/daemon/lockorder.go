package daemon

import (
	"github.com/kilnvm/kiln/internal/daemon/opstate"
	"github.com/kilnvm/kiln/internal/image"
	"github.com/kilnvm/kiln/internal/kernel"
	"github.com/kilnvm/kiln/internal/lockorder"
	"github.com/kilnvm/kiln/internal/network"
)

// Names of the daemon's ordered locks, as ARCHITECTURE.md "Lock ordering"
// writes them (lockorder_test.go compares the two).
const (
	lockVM         = "vmLocks[id]"   // vmLockSet.get(id): the outer lock of one VM's operations
	lockCreateVM   = "createVMMu"    // Daemon.createVMMu
	lockImageOps   = "imageOpsMu"    // Daemon.imageOpsMu
	lockVMLockSet  = "vmLockSet.mu"  // a leaf
	lockGuestPool  = "guestPool.mu"  // a leaf
	lockForwardSet = "forwardSet.mu" // a leaf
	lockForward    = "forward.mu"    // a leaf, one per forward

	// lockPullProgress is image_pull.go's progress lock, held across
	// op.Stage/op.Detail (opstate.LockOp) while the image store holds
	// image.LockCache shared.
	lockPullProgress = "imagePull.progress"
)

// daemonLockOrder is ARCHITECTURE.md's order, outermost first:
// vmLocks[id] → {createVMMu, imageOpsMu} → image.Store.cacheMu →
// {imagePull.progress, opstate.Registry.mu} → leaves. With check (tests, the
// e2e daemon: KILN_LOCKCHECK=1) each acquisition is checked against the
// locks its goroutine holds, and an inversion panics.
func daemonLockOrder(check bool) *lockorder.Order {
	return lockorder.New(check,
		lockorder.Level{lockVM},
		lockorder.Level{lockCreateVM, lockImageOps},
		lockorder.Level{image.LockCache},
		lockorder.Level{lockPullProgress, opstate.LockRegistry},
		lockorder.Level{lockVMLockSet, lockGuestPool, lockForwardSet, lockForward,
			// Leaves of the packages the daemon uses, named there and
			// checked when Open gives them this order.
			opstate.LockOp, image.LockStore, image.LockFlights,
			network.LockTapPool, network.LockNAT, network.LockDNSServer, kernel.LockELF},
	)
}

// initLocks names the daemon's locks in the order o. Call it in Open,
// before any lock is used; a Daemon without it has plain, unchecked locks.
func (d *Daemon) initLocks(o *lockorder.Order) {
	d.lockOrder = o
	d.createVMMu.Name, d.createVMMu.Order = lockCreateVM, o
	d.imageOpsMu.Name, d.imageOpsMu.Order = lockImageOps, o
	d.vmLocks.mu.Name, d.vmLocks.mu.Order = lockVMLockSet, o
	d.vmLocks.order = o
	d.guests.mu.Name, d.guests.mu.Order = lockGuestPool, o
	d.fwd.mu.Name, d.fwd.mu.Order = lockForwardSet, o
}
