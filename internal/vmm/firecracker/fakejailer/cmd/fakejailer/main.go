// Command fakejailer is a TEST-ONLY FAKE of Firecracker's jailer (package
// fakejailer); kiln's tests build it to run the Firecracker driver through
// a jailer on hosts without one. Never install it as jailer.
package main

import (
	"fmt"
	"os"
	"runtime"

	"github.com/kilnvm/kiln/internal/vmm/firecracker/fakejailer"
)

func main() {
	// The mount namespace, root and cwd are per thread, and the exec must
	// come from the thread that has them.
	runtime.LockOSThread()
	a, err := fakejailer.Parse(os.Args[1:])
	if err == nil {
		err = fakejailer.Run(a) // returns only on failure
	}
	fmt.Fprintf(os.Stderr, "fakejailer (test-only fake jailer): %v\n", err)
	os.Exit(1)
}
