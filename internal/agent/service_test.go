package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/testutil"
)

// TestRunServiceSetsHostname runs service mode in a subprocess with its
// own UTS namespace (so the host's name is untouched). There is no
// virtio-serial port here: the service waits for one until its context
// ends.
func TestRunServiceSetsHostname(t *testing.T) {
	if os.Getenv("KILN_SERVICE_HELPER") == "1" {
		serviceHelper(t)
		return
	}
	testutil.RequireRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestRunServiceSetsHostname$", "-test.v")
	cmd.Env = append(os.Environ(), "KILN_SERVICE_HELPER=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUTS}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "HELPER OK") {
		t.Fatalf("helper: %v\n%s", err, out)
	}
}

func serviceHelper(t *testing.T) {
	m := validConfig(t)
	m["hostname"] = "kiln-svc-test"
	b, _ := json.Marshal(m)
	cfg, err := ParseConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err = RunService(ctx, ServiceOptions{Config: cfg, Version: "t", Logger: discardLogger(), PowerOff: func() {}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RunService: %v, want the context's error", err)
	}
	if h, _ := os.Hostname(); h != "kiln-svc-test" {
		t.Fatalf("hostname %q", h)
	}
	fmt.Println("HELPER OK")
}

func TestChannelsToServe(t *testing.T) {
	for _, tc := range []struct {
		configured string
		port       bool
		want       string
	}{
		{ChannelSerial, true, "serial"},
		{ChannelSerial, false, "serial"},
		{ChannelVsock, false, "vsock"},
		{ChannelVsock, true, "vsock,serial"},
	} {
		got := strings.Join(ChannelsToServe(tc.configured, tc.port), ",")
		if got != tc.want {
			t.Errorf("ChannelsToServe(%q, %v) = %s, want %s", tc.configured, tc.port, got, tc.want)
		}
	}
}

func TestRunAllStopsTheOthers(t *testing.T) {
	boom := errors.New("boom")
	stopped := make(chan struct{})
	err := runAll(context.Background(), []func(context.Context) error{
		func(ctx context.Context) error { <-ctx.Done(); close(stopped); return ctx.Err() },
		func(context.Context) error { return boom },
	})
	if !errors.Is(err, boom) {
		t.Fatalf("runAll = %v, want boom", err)
	}
	select {
	case <-stopped:
	default:
		t.Fatal("the other server was not stopped")
	}
}
