// Package ports lists a Linux system's listening TCP sockets from
// /proc/net/tcp and /proc/net/tcp6, with the process owning each, so the
// guest agent can answer `kiln vm ports` in images that have no `ss` or
// `netstat`.
package ports

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/kilnvm/kiln/internal/agent/proto"
)

// tcpListen is the TCP_LISTEN state in /proc/net/tcp.
const tcpListen = "0A"

// Listening returns the listening TCP sockets found under procDir
// (normally "/proc"), sorted by port, then protocol and address. The
// owning process is filled in where a /proc/PID/fd link names the socket's
// inode. A missing tcp6 table (IPv6 disabled) is not an error.
func Listening(procDir string) ([]proto.ListeningPort, error) {
	var out []proto.ListeningPort
	inodes := map[string]int{} // socket inode → index in out
	for _, p := range []string{"tcp", "tcp6"} {
		f, err := os.Open(filepath.Join(procDir, "net", p))
		if err != nil {
			if p == "tcp6" && os.IsNotExist(err) {
				continue
			}
			return nil, fmt.Errorf("list listening sockets: %w", err)
		}
		socks, err := Parse(p, f)
		f.Close()
		if err != nil {
			return nil, err
		}
		for _, s := range socks {
			inodes[s.inode] = len(out)
			out = append(out, s.ListeningPort)
		}
	}
	owners(procDir, inodes, out)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Port != out[j].Port {
			return out[i].Port < out[j].Port
		}
		if out[i].Proto != out[j].Proto {
			return out[i].Proto < out[j].Proto
		}
		return out[i].Address < out[j].Address
	})
	return out, nil
}

// Socket is one parsed listening socket with its inode.
type Socket struct {
	proto.ListeningPort
	inode string
}

// Parse reads a /proc/net/tcp or tcp6 table (proto "tcp" or "tcp6") and
// returns its listening sockets. A malformed line is an error: the table
// format is the kernel's, stable for decades.
func Parse(protoName string, r io.Reader) ([]Socket, error) {
	var out []Socket
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first { // header
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) < 10 {
			return nil, fmt.Errorf("/proc/net/%s: malformed line %q", protoName, sc.Text())
		}
		if f[3] != tcpListen {
			continue
		}
		addr, port, err := parseAddr(f[1])
		if err != nil {
			return nil, fmt.Errorf("/proc/net/%s: %w", protoName, err)
		}
		out = append(out, Socket{ListeningPort: proto.ListeningPort{Proto: protoName, Address: addr.String(), Port: port}, inode: f[9]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read /proc/net/%s: %w", protoName, err)
	}
	return out, nil
}

// parseAddr decodes "0100007F:1F90": the address as 32-bit words in host
// byte order (little-endian on every platform kiln runs guests on), then
// the port in hex.
func parseAddr(s string) (netip.Addr, int, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.Addr{}, 0, fmt.Errorf("malformed address %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("malformed port in %q", s)
	}
	raw, err := hex.DecodeString(h)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, 0, fmt.Errorf("malformed address %q", s)
	}
	for i := 0; i < len(raw); i += 4 { // each word is little-endian
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	a, _ := netip.AddrFromSlice(raw)
	return a.Unmap(), int(port), nil
}

// owners fills Process and PID of the sockets whose inode a process holds.
// Unreadable processes (gone, or another user's) are skipped.
func owners(procDir string, inodes map[string]int, out []proto.ListeningPort) {
	if len(inodes) == 0 {
		return
	}
	entries, err := os.ReadDir(procDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fdDir := filepath.Join(procDir, e.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err != nil || !strings.HasPrefix(link, "socket:[") {
				continue
			}
			i, ok := inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")]
			if !ok || out[i].PID != 0 {
				continue
			}
			comm, _ := os.ReadFile(filepath.Join(procDir, e.Name(), "comm"))
			out[i].PID, out[i].Process = pid, strings.TrimSpace(string(comm))
		}
	}
}
