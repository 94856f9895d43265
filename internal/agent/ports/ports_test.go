package ports

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

const tcpTable = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 100 0 0 10 0
   2: 0300E70A:9C40 0200E70A:0016 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 100 0 0 10 0
`

const tcp6Table = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6666 1 0000000000000000 100 0 0 10 0
`

func TestParse(t *testing.T) {
	got, err := Parse("tcp", strings.NewReader(tcpTable))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"tcp 0.0.0.0 8080 1111", "tcp 127.0.0.1 22 2222"} // the established socket is left out
	check(t, got, want)

	got, err = Parse("tcp6", strings.NewReader(tcp6Table))
	if err != nil {
		t.Fatal(err)
	}
	check(t, got, []string{"tcp6 :: 80 4444", "tcp6 ::1 8081 5555", "tcp6 127.0.0.1 8082 6666"})
}

func check(t *testing.T, got []Socket, want []string) {
	t.Helper()
	var s []string
	for _, g := range got {
		s = append(s, strings.Join([]string{g.Proto, g.Address, itoa(g.Port), g.inode}, " "))
	}
	if strings.Join(s, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(s, "\n"), strings.Join(want, "\n"))
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestParseMalformed(t *testing.T) {
	for name, table := range map[string]string{
		"short line":   "header\n 0: 00000000:1F90 00000000:0000 0A\n",
		"bad port":     "header\n 0: 00000000:XYZ 00000000:0000 0A 0:0 0:0 0 0 0 1\n",
		"bad address":  "header\n 0: 000000:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1\n",
		"no separator": "header\n 0: 000000001F90 00000000:0000 0A 0:0 0:0 0 0 0 1\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse("tcp", strings.NewReader(table)); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

// A real listener of this process shows up, with this process as owner.
func TestListeningFindsOwnSocket(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	ps, err := Listening("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if p.Port == port && p.Proto == "tcp" && p.Address == "127.0.0.1" {
			if p.PID != os.Getpid() {
				t.Fatalf("port %d owned by pid %d (%s), want %d", port, p.PID, p.Process, os.Getpid())
			}
			return
		}
	}
	t.Fatalf("listener on port %d not found in %v", port, ps)
}

func TestListeningMissingProc(t *testing.T) {
	if _, err := Listening(t.TempDir()); err == nil {
		t.Fatal("no error for a directory without net/tcp")
	}
}
