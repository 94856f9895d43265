package daemon

import "fmt"

// vmmChoice is the outcome of pickVMM.
type vmmChoice struct {
	Name    string // "firecracker" or "qemu"
	Summary string // one line for the log and `kiln doctor`
	Err     error  // non-nil: the configured VMM cannot be used
}

// pickVMM decides between Firecracker and QEMU from what was configured
// and what the probes found (nil: usable). It is pure, so every host shape
// is table-tested. An explicit "firecracker" needs only the binary: a
// missing KVM then fails at boot with Firecracker's own message.
func pickVMM(configured string, fcProbe, kvmProbe error) vmmChoice {
	switch configured {
	case "qemu":
		return vmmChoice{Name: "qemu", Summary: "qemu (configured)"}
	case "firecracker":
		if fcProbe != nil {
			return vmmChoice{Name: "firecracker", Summary: "firecracker (configured) unusable: " + fcProbe.Error(), Err: fcProbe}
		}
		if kvmProbe != nil {
			return vmmChoice{Name: "firecracker", Summary: "firecracker (configured); warning: " + kvmProbe.Error()}
		}
		return vmmChoice{Name: "firecracker", Summary: "firecracker (configured)"}
	}
	switch {
	case fcProbe != nil:
		return vmmChoice{Name: "qemu", Summary: fmt.Sprintf("auto picked qemu: firecracker not usable (%v)", fcProbe)}
	case kvmProbe != nil:
		return vmmChoice{Name: "qemu", Summary: fmt.Sprintf("auto picked qemu: firecracker found but KVM not usable (%v)", kvmProbe)}
	}
	return vmmChoice{Name: "firecracker", Summary: "auto picked firecracker: binary and KVM usable"}
}
