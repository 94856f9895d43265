package api

// VMPorts answers GET /v1/vms/NAME/ports: the guest's listening TCP sockets.
type VMPorts struct {
	VM string `json:"vm"`
	// DNSName and Address are the VM's name and address on kiln's network;
	// empty when the daemon's network is off.
	DNSName string `json:"dns_name,omitempty"`
	Address string `json:"address,omitempty"`
	Ports   []Port `json:"ports"`
	// Note says why endpoints are missing (network off), if they are.
	Note string `json:"note,omitempty"`
}

// Port is one listening socket in a guest.
type Port struct {
	Proto   string `json:"proto"`   // tcp or tcp6
	Address string `json:"address"` // the bound address in the guest
	Port    int    `json:"port"`
	Process string `json:"process,omitempty"`
	PID     int    `json:"pid,omitempty"`
	// Endpoint is where the host reaches it (NAME.vm:PORT); empty when the
	// network is off or the socket is bound to the guest's loopback (use
	// `kiln vm forward` then). URL is Endpoint as an http:// link.
	Endpoint string `json:"endpoint,omitempty"`
	URL      string `json:"url,omitempty"`
	// Forwards are the host addresses forwarded to this port.
	Forwards []string `json:"forwards,omitempty"`
}

// Forward is a host port the daemon forwards into a VM through the agent
// channel: connections to HostAddr:HostPort reach 127.0.0.1:GuestPort in
// the guest. It lasts until removed or the VM stops (or the daemon exits).
type Forward struct {
	VM        string `json:"vm"`
	HostAddr  string `json:"host_addr"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
}

// ForwardRequest asks for a forward. HostPort 0 picks a free port.
type ForwardRequest struct {
	HostPort  int `json:"host_port"`
	GuestPort int `json:"guest_port"`
}
