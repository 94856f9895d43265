package network

// Names of the network's locks in a lockorder.Order (Config.LockOrder,
// PoolConfig.LockOrder, DNSConfig.LockOrder). All three are leaves: none
// is held while taking another lock or across I/O other than its own
// netlink/nftables call.
const (
	LockTapPool   = "network.TapPool.mu"
	LockNAT       = "network.NAT.mu"
	LockDNSServer = "network.DNSServer.mu"
)
