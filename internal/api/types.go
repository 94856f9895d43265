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
	// Workspace is the host repository copied into the VM, if any
	// (GET /v1/vms/NAME only).
	Workspace *Workspace `json:"workspace,omitempty"`
	// Address is the guest's IPv4 address when the daemon's network is on;
	// DNSName resolves to it through kiln's DNS server.
	Address string `json:"address,omitempty"`
	DNSName string `json:"dns_name,omitempty"`
}

// Workspace records a host git repository copied into a VM
// (`kiln vm workspace prepare`); `vm exec` runs in GuestPath by default.
type Workspace struct {
	HostPath   string `json:"host_path"`   // the repository's top directory on the host
	GuestPath  string `json:"guest_path"`  // its directory in the guest
	HeadCommit string `json:"head_commit"` // the commit the guest's history starts at
	Branch     string `json:"branch,omitempty"`
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
	// NoNAT keeps the VM off NAT (it reaches the host and other VMs only)
	// when the daemon's network is on.
	NoNAT bool `json:"no_nat,omitempty"`
	// VMM picks the VM's VMM: "qemu", "firecracker", or "auto"/empty for
	// the daemon's default. It is recorded with the VM (VM.Driver).
	VMM string `json:"vmm,omitempty"`
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
	// Digest is the manifest digest of an image pulled from a registry.
	Digest string `json:"digest,omitempty"`
	// Config is a pulled OCI image's runtime config.
	Config *ImageConfig `json:"config,omitempty"`
	// Unmanaged is the host path of a registered image's root filesystem,
	// which kiln never writes or deletes (see `kiln image promote`).
	Unmanaged string `json:"unmanaged_path,omitempty"`
}

// RegisterImageRequest records the ext4 file RootFS (an absolute host
// path) as the image Name without copying it.
type RegisterImageRequest struct {
	Name   string `json:"name"`
	RootFS string `json:"rootfs"`
	Kernel string `json:"kernel,omitempty"`
}

// ImageConfig is how an OCI image's processes run, from its config.
type ImageConfig struct {
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
}

// PullImageRequest pulls an OCI image (Ref is a reference such as
// "debian:bookworm", or the name of a catalog image) into the image Name
// (default: the catalog name, or one derived from the reference).
type PullImageRequest struct {
	Ref    string `json:"ref"`
	Name   string `json:"name,omitempty"`
	Kernel string `json:"kernel,omitempty"`
	Size   string `json:"size,omitempty"`
}

// CatalogImage is an entry of the image catalog embedded in kiln.
type CatalogImage struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	// Source is "oci:<ref>" or "debootstrap:<suite>".
	Source string `json:"source"`
	Kernel string `json:"kernel,omitempty"`
	// Present is true when an image of that name exists.
	Present bool `json:"present"`
}

// PruneCacheRequest empties the OCI blob cache.
type PruneCacheRequest struct {
	DryRun bool `json:"dry_run,omitempty"`
}

// PruneCacheResult says what a prune freed (or would free).
type PruneCacheResult struct {
	Blobs  int   `json:"blobs"`
	Bytes  int64 `json:"bytes"`
	DryRun bool  `json:"dry_run"`
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
	Version   uint64     `json:"version"` // grows on each change; see QueryOpAfter
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
	// VMMs lists every VMM driver the daemon knows, usable or not.
	VMMs []VMMInfo `json:"vmms,omitempty"`
}

// VMMInfo is one VMM driver as a daemon sees it.
type VMMInfo struct {
	Name    string `json:"name"`
	Usable  bool   `json:"usable"`
	Default bool   `json:"default"`           // what `--vmm auto` (or none) takes
	Version string `json:"version,omitempty"` // where known
	Reason  string `json:"reason,omitempty"`  // why it is not usable
}
