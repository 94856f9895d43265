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
	PathVMConnect    = "/v1/vms/{name}/connect" // Upgrade: a raw stream to the agent's SSH server
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
	UpgradeProtocol  = "kiln-stream"
	HeaderOpID       = "Kiln-Op-Id"
	HeaderAPIVersion = "Kiln-Api-Version"
	APIVersion       = "1"
)
