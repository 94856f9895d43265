package api

// Routes of the daemon's HTTP API (on the Unix socket). One place, so the
// server's table, the client and the docs agree.
const (
	PathVersion      = "/v1/version"
	PathVMs          = "/v1/vms"
	PathVM           = "/v1/vms/{name}"
	PathVMAction     = "/v1/vms/{name}/{action}" // POST start|stop|kill
	PathVMLogs       = "/v1/vms/{name}/logs"
	PathVMSSH        = "/v1/vms/{name}/ssh"
	PathVMConnect    = "/v1/vms/{name}/connect"         // Upgrade: a raw stream to the agent's SSH server
	PathVMWorkspace  = "/v1/vms/{name}/workspace"       // PUT: record the VM's workspace
	PathVMPorts      = "/v1/vms/{name}/ports"           // GET: the guest's listening sockets
	PathVMForwards   = "/v1/vms/{name}/forwards"        // GET: list, POST: add a host port forward
	PathVMForward    = "/v1/vms/{name}/forwards/{port}" // DELETE: remove the forward of host port
	PathForwards     = "/v1/forwards"                   // GET: every VM's forwards
	PathOperations   = "/v1/operations"
	PathOperation    = "/v1/operations/{id}"
	PathOpCancel     = "/v1/operations/{id}/cancel"
	PathKernels      = "/v1/kernels"
	PathKernel       = "/v1/kernels/{name}"
	PathKernelPull   = "/v1/kernels/pull"
	PathImages       = "/v1/images"
	PathImage        = "/v1/images/{name}"
	PathImageTar     = "/v1/images/import-tar" // body: the tarball; query: name, kernel, size
	PathImageBuild   = "/v1/images/build"
	PathImagePull    = "/v1/images/pull"        // OCI ref or catalog name; async
	PathImageCatalog = "/v1/images/catalog"     // GET: the embedded catalog
	PathImagePrune   = "/v1/images/cache/prune" // POST: empty the OCI blob cache
	UpgradeProtocol  = "kiln-stream"
	HeaderOpID       = "Kiln-Op-Id"
	HeaderAPIVersion = "Kiln-Api-Version"
	APIVersion       = "1"
)

// Routes of unmanaged images (registered host files).
const (
	PathImageRegister = "/v1/images/register"       // POST: record an unmanaged host rootfs
	PathImagePromote  = "/v1/images/{name}/promote" // POST: copy it into managed storage
)
