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
	PathVMConnect    = "/v1/vms/{name}/connect"   // Upgrade: a raw stream to the agent's SSH server
	PathVMWorkspace  = "/v1/vms/{name}/workspace" // PUT: record the VM's workspace
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
