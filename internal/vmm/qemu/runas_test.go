package qemu

import (
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kilnvm/kiln/internal/testutil"
)

// nobody is Debian's nobody:nogroup.
const nobody = 65534

// procIDs returns the real uid and gid of pid from /proc/PID/status.
func procIDs(t *testing.T, pid int) (uid, gid int) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	uid, gid = -1, -1
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 && f[0] == "Uid:" {
			uid, _ = strconv.Atoi(f[1])
		}
		if len(f) > 1 && f[0] == "Gid:" {
			gid, _ = strconv.Atoi(f[1])
		}
	}
	return uid, gid
}

// TestBootRunAs boots a QEMU that drops to nobody:nogroup: it opens its
// root-only runtime dir, console and sockets first, so it starts; root
// still finds it from its pid file, speaks QMP to it (the stop ladder's
// power-button step succeeds) and signals it; the files it can no longer
// remove do not stop the next start in the same dir.
func TestBootRunAs(t *testing.T) {
	testutil.RequireRoot(t)
	t.Parallel()
	idle := "#!/bin/busybox sh\necho KILN-IDLE\nwhile :; do /bin/busybox sleep 3600; done\n"
	spec := bootSpec(t, "runas", idle)
	spec.RunAsUID, spec.RunAsGID = nobody, nobody
	var logs syncBuffer
	d := New(Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	h := startVM(t, d, spec)
	if uid, gid := procIDs(t, h.PID); uid != nobody || gid != nobody {
		t.Fatalf("QEMU runs as %d:%d, want %d:%d", uid, gid, nobody, nobody)
	}
	if fi, err := os.Stat(spec.Dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("runtime dir mode: %v %v", fi, err)
	}
	if f, ok := d.Find(spec.Dir); !ok || f.PID != h.PID || f.StartTicks != h.StartTicks {
		t.Errorf("Find = %+v %v, want pid %d", f, ok, h.PID)
	}
	waitConsole(t, spec, "KILN-IDLE")

	// The busybox guest ignores the power button, so the ladder goes on to
	// SIGTERM; asking through QMP must not have failed.
	if err := d.Stop(t.Context(), h, 500*time.Millisecond); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if l := logs.String(); !strings.Contains(l, "by=SIGTERM") || strings.Contains(l, "ask guest to shut down") {
		t.Errorf("stop log: want SIGTERM after a successful QMP power-down request:\n%s", l)
	}
	if d.Alive(h) || !procGone(h.PID) {
		t.Fatal("VMM still there after Stop")
	}

	// Unprivileged, QEMU could not remove its pid file and sockets; the
	// next start clears them, and Kill works on the new one.
	h2 := startVM(t, d, spec)
	if uid, _ := procIDs(t, h2.PID); uid != nobody {
		t.Fatalf("restarted QEMU runs as uid %d", uid)
	}
	if err := d.Kill(t.Context(), h2); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if d.Alive(h2) || !procGone(h2.PID) {
		t.Error("VMM still there after Kill")
	}
	if pids := qemusMentioning(t, filepath.Dir(spec.Dir)); len(pids) > 0 {
		t.Errorf("processes left: %v", pids)
	}
}
