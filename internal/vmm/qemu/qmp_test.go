package qemu

import (
	"bufio"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeQMP serves one connection on a Unix socket with script, which gets
// each line the client sends and returns what to answer.
func fakeQMP(t *testing.T, greeting string, script func(line string) string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if greeting == "" {
			return
		}
		c.Write([]byte(greeting + "\n"))
		if script == nil {
			return
		}
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			if reply := script(sc.Text()); reply != "" {
				c.Write([]byte(reply + "\n"))
			}
		}
	}()
	return path
}

const greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": []}}`

func TestQMPRun(t *testing.T) {
	t.Run("reply after an event", func(t *testing.T) {
		path := fakeQMP(t, greeting, func(line string) string {
			if strings.Contains(line, "qmp_capabilities") {
				return `{"return": {}}`
			}
			return `{"event": "POWERDOWN", "timestamp": {"seconds": 1, "microseconds": 2}}` + "\n" + `{"return": {"status": "running", "running": true}}`
		})
		ret, err := qmpRun(t.Context(), path, 5*time.Second, "query-status")
		if err != nil || !strings.Contains(string(ret), `"running"`) {
			t.Fatalf("qmpRun = %s, %v", ret, err)
		}
	})
	t.Run("command error", func(t *testing.T) {
		path := fakeQMP(t, greeting, func(line string) string {
			if strings.Contains(line, "qmp_capabilities") {
				return `{"return": {}}`
			}
			return `{"error": {"class": "CommandNotFound", "desc": "The command system_powerdown has not been found"}}`
		})
		_, err := qmpRun(t.Context(), path, 5*time.Second, "system_powerdown")
		if err == nil || !strings.Contains(err.Error(), "qmp system_powerdown: CommandNotFound: The command system_powerdown has not been found") {
			t.Fatalf("qmpRun = %v", err)
		}
	})
	t.Run("closed before greeting", func(t *testing.T) {
		path := fakeQMP(t, "", nil)
		_, err := qmpRun(t.Context(), path, 5*time.Second)
		if err == nil || !strings.Contains(err.Error(), "read qmp greeting") {
			t.Fatalf("qmpRun = %v", err)
		}
	})
	t.Run("silent server times out", func(t *testing.T) {
		path := fakeQMP(t, greeting, func(string) string { return "" })
		begin := time.Now()
		_, err := qmpRun(t.Context(), path, 200*time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), "timeout") {
			t.Fatalf("qmpRun = %v", err)
		}
		if d := time.Since(begin); d > 3*time.Second {
			t.Errorf("timeout honoured only after %s", d)
		}
	})
	t.Run("not a qmp server", func(t *testing.T) {
		path := fakeQMP(t, `{"hello": 1}`, nil)
		_, err := qmpRun(t.Context(), path, 5*time.Second)
		if err == nil || !strings.Contains(err.Error(), "not a QMP greeting") {
			t.Fatalf("qmpRun = %v", err)
		}
	})
}
