package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/kilnvm/kiln/internal/testutil"
)

// TestBenchmarkForward times `kiln vm forward` (a localhost port carried
// through the agent channel) against a direct TCP connection to the guest's
// address on the bridge, moving the same bytes each way to the same guest
// programs. It runs in the network namespace of netHarness, writes its
// section of $KILN_BENCH_OUT and is skipped unless that variable is set.
func TestBenchmarkForward(t *testing.T) {
	out := os.Getenv("KILN_BENCH_OUT")
	if out == "" {
		t.Skip("set KILN_BENCH_OUT=FILE (make bench) to run the benchmarks")
	}
	const (
		size   = 32 << 20
		rounds = 3
	)
	h, ns, _ := netHarness(t)
	vm := h.createVM(t, "fwbench")
	// Per connection: the sink counts what it got and answers the count
	// once the host half-closes; the source sends size zero bytes.
	h.mustKiln(t, "vm", "exec", "fwbench", "--", "sh", "-c", fmt.Sprintf(
		"printf '#!/bin/sh\\nexec wc -c\\n' > /tmp/sink && "+
			"printf '#!/bin/sh\\nexec dd if=/dev/zero bs=65536 count=%d 2>/dev/null\\n' > /tmp/source && "+
			"chmod +x /tmp/sink /tmp/source && "+
			"(nc -ll -p 9100 -e /tmp/sink </dev/null >/dev/null 2>&1 &) && "+
			"(nc -ll -p 9101 -e /tmp/source </dev/null >/dev/null 2>&1 &)", size/65536))
	testutil.WaitFor(t, 30*time.Second, "the guest's sink and source listening", func() bool {
		var n int
		for _, p := range vmPorts(t, h, "fwbench").Ports {
			if p.Port == 9100 || p.Port == 9101 {
				n++
			}
		}
		return n == 2
	})
	sinkFwd := addForward(t, h, "fwbench", "0:9100")
	srcFwd := addForward(t, h, "fwbench", "0:9101")
	via := map[string][2]string{
		"forward": {net.JoinHostPort(sinkFwd.HostAddr, strconv.Itoa(sinkFwd.HostPort)),
			net.JoinHostPort(srcFwd.HostAddr, strconv.Itoa(srcFwd.HostPort))},
		"direct": {net.JoinHostPort(vm.Address, "9100"), net.JoinHostPort(vm.Address, "9101")},
	}

	payload := make([]byte, size)
	up := map[string][]time.Duration{}
	down := map[string][]time.Duration{}
	for i := 0; i < rounds; i++ {
		for _, path := range []string{"direct", "forward"} {
			d, err := timeUpload(ns, via[path][0], payload)
			if err != nil {
				t.Fatalf("%s upload, round %d: %v", path, i, err)
			}
			up[path] = append(up[path], d)
			d, err = timeDownload(ns, via[path][1], size)
			if err != nil {
				t.Fatalf("%s download, round %d: %v", path, i, err)
			}
			down[path] = append(down[path], d)
			t.Logf("round %d %s: up %v, down %v", i, path, up[path][i], down[path][i])
		}
	}

	accel := "tcg"
	if v, err := h.client().Version(t.Context()); err == nil {
		accel = v.Accel
	}
	mibs := func(ds []time.Duration) float64 { return float64(size) / (1 << 20) / median(ds).Seconds() }
	var b strings.Builder
	fmt.Fprintf(&b, "## Port forwarding\n\nMeasured by `make bench` (`TestBenchmarkForward` in `test/e2e`) on %s, %d CPUs, QEMU accel **%s**, %d rounds of %d MiB each way, on %s.\n",
		runtime.GOARCH, runtime.NumCPU(), accel, rounds, size>>20, time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&b, "Throughput is the payload over the median time (spread of the times in brackets); the ratio is the forward's throughput over the direct connection's, from the same run.\n\n")
	fmt.Fprintf(&b, "| direction | `kiln vm forward` (127.0.0.1 → agent channel) | direct TCP to the guest address (bridge, TAP) | ratio |\n| --- | --- | --- | --- |\n")
	row := func(name string, m map[string][]time.Duration) {
		fmt.Fprintf(&b, "| %s | %.1f MiB/s, %s | %.1f MiB/s, %s | **%.2f×** |\n", name,
			mibs(m["forward"]), spread(m["forward"]), mibs(m["direct"]), spread(m["direct"]),
			mibs(m["forward"])/mibs(m["direct"]))
	}
	row("host → guest (guest `nc -e 'wc -c'`, timed until the count came back)", up)
	row("guest → host (guest `nc -e 'dd if=/dev/zero'`, timed until EOF)", down)
	fmt.Fprintf(&b, "\nThe direct path is the guest's virtio-net device on the bridge; the forward path is the daemon's "+
		"listener, an SSH direct-tcpip channel multiplexed with the agent's other traffic on the virtio-serial "+
		"port, and the agent's dial to the guest port. The benchmark runs in a network namespace of its own "+
		"with networking on, so both paths reach the same guest programs.\n")
	if err := writeBenchSection(out, "forward", b.String()); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + b.String())
}

// dialIn connects to addr from inside ns.
func dialIn(ns netns.NsHandle, addr string) (*net.TCPConn, error) {
	var c net.Conn
	err := testutil.InNS(ns, func() (err error) { c, err = net.DialTimeout("tcp4", addr, 10*time.Second); return err })
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// timeUpload sends data to the sink at addr, half-closes, and times until
// the sink's byte count comes back; the count must match.
func timeUpload(ns netns.NsHandle, addr string, data []byte) (time.Duration, error) {
	start := time.Now()
	c, err := dialIn(ns, addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	if _, err := c.Write(data); err != nil {
		return 0, fmt.Errorf("send: %w", err)
	}
	if err := c.CloseWrite(); err != nil {
		return 0, err
	}
	got, err := io.ReadAll(c)
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("read the count: %w", err)
	}
	if n, _ := strconv.Atoi(strings.TrimSpace(string(got))); n != len(data) {
		return 0, fmt.Errorf("the guest counted %q bytes, sent %d", got, len(data))
	}
	return d, nil
}

// timeDownload reads from the source at addr until EOF and times it; it
// must get exactly size bytes.
func timeDownload(ns netns.NsHandle, addr string, size int) (time.Duration, error) {
	start := time.Now()
	c, err := dialIn(ns, addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	n, err := io.Copy(io.Discard, c)
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("receive: %w", err)
	}
	if n != int64(size) {
		return 0, fmt.Errorf("got %d bytes, want %d", n, size)
	}
	return d, nil
}
