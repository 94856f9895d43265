package firecracker

import (
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
	"github.com/kilnvm/kiln/internal/vmm"
)

// File names inside a VM's runtime directory (vmm.Spec.Dir).
const (
	APISocketName   = "firecracker.sock"
	VsockSocketName = "vsock.sock"
	PIDFileName     = "firecracker.pid"
	LogFileName     = "firecracker.log"
	MetricsFileName = "firecracker.metrics"
)

// Paths are the files Firecracker uses for one VM.
type Paths struct {
	API     string // the REST API socket (--api-sock)
	Vsock   string // the hybrid vsock socket (Vsock.uds_path)
	PIDFile string // written by the driver
	Log     string // Firecracker's stderr and its logger
	Metrics string
}

// PathsFor returns the Paths inside a VM's runtime directory.
func PathsFor(dir string) Paths {
	return Paths{
		API:     filepath.Join(dir, APISocketName),
		Vsock:   filepath.Join(dir, VsockSocketName),
		PIDFile: filepath.Join(dir, PIDFileName),
		Log:     filepath.Join(dir, LogFileName),
		Metrics: filepath.Join(dir, MetricsFileName),
	}
}

// Limits are optional rate limits applied to every drive and NIC.
type Limits struct {
	Drive *RateLimiter
	NIC   *RateLimiter
}

// PerSecond is a rate limiter allowing bytesPerSec bytes and opsPerSec
// operations each second (a bucket of one second's worth, refilled over a
// second); a zero rate is unlimited, and nil means no limiter at all.
func PerSecond(bytesPerSec, opsPerSec int64) *RateLimiter {
	bucket := func(n int64) *TokenBucket {
		if n <= 0 {
			return nil
		}
		return &TokenBucket{Size: n, RefillTime: 1000}
	}
	if bytesPerSec <= 0 && opsPerSec <= 0 {
		return nil
	}
	return &RateLimiter{Bandwidth: bucket(bytesPerSec), Ops: bucket(opsPerSec)}
}

// Plan returns the ordered API requests that configure a VM for spec, up
// to but not including InstanceStart. It is a pure function: the contract
// tests check every request it can produce against the API spec.
// Disks[0] is the root device. The guest's serial console is Firecracker's
// stdout, which the driver sends to spec.SerialLog.
func Plan(spec vmm.Spec, paths Paths, limits Limits) []Request {
	reqs := []Request{
		{http.MethodPut, "/logger", Logger{LogPath: paths.Log, Level: "Info", ShowLevel: true}},
		{http.MethodPut, "/metrics", Metrics{MetricsPath: paths.Metrics}},
		{http.MethodPut, "/machine-config", MachineConfig{VCPUCount: spec.CPUs, MemSizeMiB: spec.MemoryMiB}},
		{http.MethodPut, "/boot-source", BootSource{KernelImagePath: spec.Kernel, InitrdPath: spec.Initrd, BootArgs: spec.Cmdline}},
	}
	for i, d := range spec.Disks {
		id := driveID(i)
		reqs = append(reqs, Request{http.MethodPut, "/drives/" + id, Drive{
			DriveID: id, PathOnHost: d.Path, IsRootDevice: i == 0, IsReadOnly: d.ReadOnly,
			CacheType: "Unsafe", RateLimiter: limits.Drive,
		}})
	}
	for i, n := range spec.NICs {
		id := "eth" + strconv.Itoa(i)
		reqs = append(reqs, Request{http.MethodPut, "/network-interfaces/" + id, NetworkInterface{
			IfaceID: id, HostDevName: n.TAP, GuestMAC: n.MAC,
			RxRateLimiter: limits.NIC, TxRateLimiter: limits.NIC,
		}})
	}
	reqs = append(reqs,
		Request{http.MethodPut, "/vsock", Vsock{GuestCID: spec.CID, UDSPath: paths.Vsock}},
		Request{http.MethodPut, "/entropy", EntropyDevice{}},
	)
	return reqs
}

// driveID names disk i: "root", then "disk1", "disk2", ...
func driveID(i int) string {
	if i == 0 {
		return "root"
	}
	return "disk" + strconv.Itoa(i)
}

// validateSpec checks what Plan and Firecracker rely on, so that a bad
// spec fails with a classed error before any process starts.
func validateSpec(spec vmm.Spec, paths Paths) error {
	// Firecracker accepts 1-32 vCPUs (the spec's MachineConfiguration).
	if err := spec.Check(32, paths.API, paths.Vsock); err != nil {
		return err
	}
	if len(spec.Disks) == 0 {
		return api.Errorf(api.ErrBadRequest, "vm %q: no root disk", spec.Name)
	}
	for i, n := range spec.NICs {
		if n.User {
			return api.Errorf(api.ErrBadRequest, "vm %q: nic %d: Firecracker has no user-mode networking", spec.Name, i)
		}
	}
	if spec.CID < 3 {
		return api.Errorf(api.ErrBadRequest, "vm %q: vsock cid %d is reserved (want >= 3)", spec.Name, spec.CID)
	}
	return nil
}

// Release is a Firecracker version.
type Release struct{ Major, Minor, Patch int }

func (r Release) String() string { return fmt.Sprintf("%d.%d.%d", r.Major, r.Minor, r.Patch) }

// Less reports whether r is older than o.
func (r Release) Less(o Release) bool {
	if r.Major != o.Major {
		return r.Major < o.Major
	}
	if r.Minor != o.Minor {
		return r.Minor < o.Minor
	}
	return r.Patch < o.Patch
}

// MinRelease is the oldest Firecracker kiln drives: 1.8 passes virtio
// devices to the guest in ACPI tables, which a stock distro kernel needs.
func MinRelease() Release { return Release{1, 8, 0} }

// TestedRange returns the oldest and newest releases whose API the
// contract tests check (the spec shipped with kiln).
func TestedRange() (Release, Release) { return Release{1, 16, 0}, Release{1, 16, 1} }

var versionRE = regexp.MustCompile(`Firecracker v(\d+)\.(\d+)\.(\d+)`)

// ParseVersion reads the output of `firecracker --version`.
func ParseVersion(out string) (Release, error) {
	m := versionRE.FindStringSubmatch(out)
	if m == nil {
		first, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
		return Release{}, fmt.Errorf("unrecognised firecracker --version output %q", first)
	}
	var r Release
	r.Major, _ = strconv.Atoi(m[1])
	r.Minor, _ = strconv.Atoi(m[2])
	r.Patch, _ = strconv.Atoi(m[3])
	return r, nil
}
