package api

import "time"

// VM states.
const (
	StateCreating = "creating"
	StateRunning  = "running"
	StateStopped  = "stopped"
	StateError    = "error"
)

// VM is a virtual machine as the daemon reports it.
type VM struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	State     string    `json:"state"`
	Image     string    `json:"image"`
	Kernel    string    `json:"kernel"`
	VCPUs     int       `json:"vcpus"`
	MemoryMiB int       `json:"memory_mib"`
	Driver    string    `json:"driver"`
	Accel     string    `json:"accel,omitempty"`
	PID       int       `json:"pid,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	LastError string    `json:"last_error,omitempty"`
	// HostKeyFingerprint is the SHA256 fingerprint of the guest's SSH host key.
	HostKeyFingerprint string `json:"host_key_fingerprint,omitempty"`
}

// CreateVMRequest asks for a new VM. Zero values take the daemon's defaults.
type CreateVMRequest struct {
	Name      string `json:"name"`
	Image     string `json:"image,omitempty"`
	Kernel    string `json:"kernel,omitempty"`
	VCPUs     int    `json:"vcpus,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	// NoStart creates the VM's disks and record without booting it.
	NoStart bool `json:"no_start,omitempty"`
}

// SSHCredentials let a client speak SSH to a VM's agent through the
// daemon's stream endpoint.
type SSHCredentials struct {
	User          string `json:"user"`
	HostPublicKey string `json:"host_public_key"` // authorized_keys format
	ClientKey     string `json:"client_key"`      // OpenSSH PEM private key
}

// Kernel is an imported guest kernel.
type Kernel struct {
	Name      string    `json:"name"`
	Release   string    `json:"release"`
	Source    string    `json:"source"`
	Format    string    `json:"format"`
	Modules   []string  `json:"modules"`
	Size      int64     `json:"size"`
	CreatedAt time.Time `json:"created_at"`
}

// ImportKernelRequest imports a kernel from host paths (absolute, read by
// the daemon) or from the host's running kernel.
type ImportKernelRequest struct {
	Name       string `json:"name"`
	Deb        string `json:"deb,omitempty"`
	Vmlinuz    string `json:"vmlinuz,omitempty"`
	ModulesDir string `json:"modules_dir,omitempty"`
	FromHost   bool   `json:"from_host,omitempty"`
}

// PullKernelRequest fetches a distribution kernel.
type PullKernelRequest struct {
	Name   string `json:"name"`
	Distro string `json:"distro"` // "debian"
}

// Image is a root filesystem image.
type Image struct {
	Name       string    `json:"name"`
	Source     string    `json:"source"`
	Size       int64     `json:"size"`
	HasSystemd bool      `json:"has_systemd"`
	Kernel     string    `json:"kernel,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
}

// ImportImageRequest imports an image from a host directory; a tarball is
// sent as the request body instead (POST /v1/images/import-tar).
type ImportImageRequest struct {
	Name   string `json:"name"`
	Dir    string `json:"dir,omitempty"`
	Kernel string `json:"kernel,omitempty"`
	Size   string `json:"size,omitempty"`
}

// BuildImageRequest builds an image with debootstrap.
type BuildImageRequest struct {
	Name    string   `json:"name"`
	Suite   string   `json:"suite"`
	Mirror  string   `json:"mirror,omitempty"`
	Include []string `json:"include,omitempty"`
	Kernel  string   `json:"kernel,omitempty"`
	Size    string   `json:"size,omitempty"`
}

// Operation states.
const (
	OpRunning   = "running"
	OpSucceeded = "succeeded"
	OpFailed    = "failed"
	OpCanceled  = "canceled"
)

// Operation is an asynchronous daemon operation (VM create, image build,
// kernel pull) with its stages.
type Operation struct {
	ID        string     `json:"id"`
	Kind      string     `json:"kind"`   // "vm.create", "image.build", ...
	Target    string     `json:"target"` // the VM, image or kernel name
	State     string     `json:"state"`
	Stages    []Stage    `json:"stages"`
	Error     *Error     `json:"error,omitempty"`
	Result    any        `json:"result,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	EndedAt   *time.Time `json:"ended_at,omitempty"`
}

// Stage is one named step of an operation.
type Stage struct {
	Name      string        `json:"name"`
	Detail    string        `json:"detail,omitempty"`
	StartedAt time.Time     `json:"started_at"`
	Duration  time.Duration `json:"duration_ns"`
	Done      bool          `json:"done"`
}

// Check is one `kiln doctor` finding.
type Check struct {
	Name   string `json:"name"`
	Status string `json:"status"` // "pass", "warn", "fail"
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Version describes the daemon.
type Version struct {
	Version string `json:"version"`
	PID     int    `json:"pid"`
	VMM     string `json:"vmm"`
	Accel   string `json:"accel"`
	Note    string `json:"note,omitempty"`
}
