package testutil

import (
	"runtime"

	"github.com/vishvananda/netns"
)

// InNS runs fn on a thread inside ns, so sockets fn makes live there. If
// the thread cannot be moved back, it stays locked and dies with the
// goroutine rather than serve others in the wrong namespace.
func InNS(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := fn()
	if netns.Set(orig) == nil {
		runtime.UnlockOSThread()
	}
	return ferr
}
