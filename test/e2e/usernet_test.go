package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/testutil"
)

// TestUserNetwork runs a second daemon with `network_mode = "user"`: VMs
// get QEMU's user-mode network (no TAP, bridge or nftables rule on the
// host), the agent configures 10.0.2.15 with gateway 10.0.2.2 and DNS
// 10.0.2.3, and the guest reaches a server on the host's loopback through
// the gateway address.
func TestUserNetwork(t *testing.T) {
	base := setup(t)
	root, err := os.MkdirTemp("/tmp", "kiln-e2u-")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{root: root, bin: base.bin, config: filepath.Join(root, "config.toml")}
	const bridge = "kilnu0" // named so a wrongly chosen bridge mode would show
	cfg := fmt.Sprintf("network = true\nnetwork_mode = \"user\"\nbridge = %q\n", bridge)
	if err := os.WriteFile(h.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	h.env = append(os.Environ(),
		"KILN_STATE_DIR="+filepath.Join(root, "state"), "KILN_RUN_DIR="+filepath.Join(root, "run"),
		"KILN_CACHE_DIR="+filepath.Join(root, "cache"), "KILN_DEFAULT_IMAGE=bb", "KILN_DEFAULT_KERNEL=test",
		"KILN_MEMORY_MIB=512", "KILN_SOCKET_GROUP=", "KILN_BOOT_TIMEOUT=2m", "KILN_STOP_TIMEOUT=20s",
		"KILN_LOG_LEVEL=debug", "KILN_VMM=qemu", "NO_COLOR=1")
	t.Cleanup(func() { h.teardown() })
	if err := h.startDaemon(nil); err != nil {
		t.Fatal(err)
	}
	h.mustKiln(t, "kernel", "import", "test", "--deb", testutil.DebianKernelDeb(t))
	h.mustKiln(t, "image", "import", "bb", "--rootfs-tar", testutil.BusyboxRootfsTar(t), "--kernel", "test")
	if log, _ := os.ReadFile(filepath.Join(root, "daemon.log")); !strings.Contains(string(log), `"msg":"network mode","mode":"user"`) {
		t.Fatalf("the daemon did not log user mode:\n%s", h.daemonLog())
	}

	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello-from-host")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	port := l.Addr().(*net.TCPAddr).Port

	h.createVM(t, "un")
	if r := h.mustKiln(t, "vm", "exec", "un", "--", "ip", "-4", "addr"); !strings.Contains(r.stdout, "10.0.2.15/24") {
		t.Fatalf("guest addresses lack 10.0.2.15/24:\n%s", r.stdout)
	}
	if r := h.mustKiln(t, "vm", "exec", "un", "--", "cat", "/etc/resolv.conf"); !strings.Contains(r.stdout, "nameserver 10.0.2.3") {
		t.Fatalf("guest resolv.conf:\n%s", r.stdout)
	}
	r := h.kiln(t, "vm", "exec", "un", "--", "sh", "-c", fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 20 10.0.2.2 %d`, port))
	if r.code != 0 || !strings.Contains(r.stdout, "hello-from-host") {
		t.Fatalf("guest -> host loopback through the user-mode gateway: %s\nconsole:\n%s", r, h.kiln(t, "vm", "logs", "un").stdout)
	}
	if exists(filepath.Join("/sys/class/net", bridge)) {
		t.Fatalf("user mode created the bridge %s", bridge)
	}
	h.mustKiln(t, "vm", "delete", "un")
}
