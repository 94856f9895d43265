package network

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/kilnvm/kiln/internal/lockorder"
)

// recordTTL is short: records follow VMs that come and go.
const recordTTL = 5

// DNSConfig configures a DNSServer.
type DNSConfig struct {
	Zone   string         // "vm": answers <name>.vm.
	Listen netip.AddrPort // UDP and TCP
	// Upstream servers (host:port) for other names; none: REFUSED.
	Upstream []string
	Logger   *slog.Logger
	// LockOrder, when set, names the server's lock (LockDNSServer) in it.
	LockOrder *lockorder.Order
}

// DNSServer is authoritative for one zone whose names are VM names; it
// answers A queries with the VM's address and NXDOMAIN for unknown names,
// and forwards other names to the upstream servers, if any.
type DNSServer struct {
	// Immutable after StartDNS.
	zone     string // FQDN, lower case: "vm."
	upstream []string
	log      *slog.Logger
	addr     netip.AddrPort
	udp, tcp *dns.Server

	mu      lockorder.RWMutex // leaf (LockDNSServer); guards records
	records map[string]netip.Addr
}

// StartDNS listens and serves in the background.
func StartDNS(cfg DNSConfig) (*DNSServer, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &DNSServer{zone: dns.Fqdn(strings.ToLower(cfg.Zone)), upstream: cfg.Upstream, log: cfg.Logger,
		records: map[string]netip.Addr{}}
	s.mu.Name, s.mu.Order = LockDNSServer, cfg.LockOrder
	pc, err := net.ListenPacket("udp4", cfg.Listen.String())
	if err != nil {
		return nil, fmt.Errorf("dns: listen on udp %v: %w", cfg.Listen, err)
	}
	l, err := net.Listen("tcp4", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("dns: listen on tcp %v: %w", cfg.Listen, err)
	}
	s.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	mux := dns.NewServeMux()
	mux.HandleFunc(s.zone, s.serveZone)
	mux.HandleFunc(".", s.serveOther)
	// Wait until both serve: Shutdown before that fails ("server not
	// started") and would leave the sockets open.
	started := make(chan error, 4)
	s.udp = &dns.Server{PacketConn: pc, Handler: mux, NotifyStartedFunc: func() { started <- nil }}
	s.tcp = &dns.Server{Listener: l, Handler: mux, NotifyStartedFunc: func() { started <- nil }}
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		go func() {
			if err := srv.ActivateAndServe(); err != nil {
				s.log.Warn("dns server stopped", "err", err)
				select {
				case started <- err:
				default:
				}
			}
		}()
	}
	for range 2 {
		if err := <-started; err != nil {
			_ = s.Close()
			pc.Close()
			l.Close()
			return nil, fmt.Errorf("dns: serve on %v: %w", s.addr, err)
		}
	}
	return s, nil
}

// Addr is the address served.
func (s *DNSServer) Addr() netip.AddrPort { return s.addr }

// Set publishes name (a VM name, without the zone) at addr.
func (s *DNSServer) Set(name string, addr netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records[strings.ToLower(name)] = addr
}

// Remove withdraws name.
func (s *DNSServer) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, strings.ToLower(name))
}

// Prune withdraws every name not in keep.
func (s *DNSServer) Prune(keep map[string]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n := range s.records {
		if !keep[n] {
			delete(s.records, n)
		}
	}
}

// Lookup is the address published for name.
func (s *DNSServer) Lookup(name string) (netip.Addr, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a, ok := s.records[strings.ToLower(name)]
	return a, ok
}

func (s *DNSServer) soa() dns.RR {
	return &dns.SOA{Hdr: dns.RR_Header{Name: s.zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: recordTTL},
		Ns: "ns." + s.zone, Mbox: "hostmaster." + s.zone, Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: recordTTL}
}

func (s *DNSServer) serveZone(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	label := strings.TrimSuffix(strings.TrimSuffix(name, s.zone), ".")
	switch {
	case name == s.zone:
		if q.Qtype == dns.TypeSOA {
			m.Answer = append(m.Answer, s.soa())
		} else {
			m.Ns = append(m.Ns, s.soa())
		}
	case strings.Contains(label, "."):
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, s.soa())
	default:
		addr, ok := s.Lookup(label)
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
			m.Ns = append(m.Ns, s.soa())
		case q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: recordTTL},
				A: net.IP(addr.AsSlice())})
		default: // the name exists, without records of that type
			m.Ns = append(m.Ns, s.soa())
		}
	}
	_ = w.WriteMsg(m)
}

func (s *DNSServer) serveOther(w dns.ResponseWriter, r *dns.Msg) {
	for _, up := range s.upstream {
		c := &dns.Client{Timeout: 3 * time.Second}
		if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
			c.Net = "tcp"
		}
		resp, _, err := c.Exchange(r, up)
		if err == nil {
			_ = w.WriteMsg(resp)
			return
		}
		s.log.Debug("dns: upstream failed", "upstream", up, "err", err)
	}
	m := new(dns.Msg)
	m.SetRcode(r, dns.RcodeRefused)
	_ = w.WriteMsg(m)
}

// Close stops serving.
func (s *DNSServer) Close() error {
	var errs []error
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		if err := srv.Shutdown(); err != nil && !strings.Contains(err.Error(), "not started") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// UpstreamFromResolvConf lists the nameservers of a resolv.conf body as
// host:53 (IPv4 only: the DNS server listens on IPv4).
func UpstreamFromResolvConf(body string) []string {
	var out []string
	for _, line := range strings.Split(body, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			a, err := netip.ParseAddr(f[1])
			if err != nil || !a.Is4() {
				continue
			}
			out = append(out, netip.AddrPortFrom(a, 53).String())
		}
	}
	return out
}
