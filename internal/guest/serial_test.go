package guest

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/kilnvm/kiln/internal/agent/proto"
)

func TestAwaitHello(t *testing.T) {
	for _, tc := range []struct {
		in     string
		ok     bool
		resets int
		rest   string
	}{
		{proto.SerialHello + "yamux", true, 0, "yamux"},
		{"\x00\x01" + proto.SerialReset + "junk" + proto.SerialReset + proto.SerialHello + "y", true, 2, "y"},
		{"KILN-RESET-1KILN-HELLO-1\n", true, 0, ""},
		{proto.SerialReset, false, 1, ""},
		{"KILN-HELLO-", false, 0, ""},
	} {
		br := bufio.NewReader(strings.NewReader(tc.in))
		resets := 0
		err := awaitHello(br, func() { resets++ })
		if (err == nil) != tc.ok || resets != tc.resets {
			t.Errorf("%q: err %v resets %d, want ok=%v resets %d", tc.in, err, resets, tc.ok, tc.resets)
			continue
		}
		if !tc.ok {
			if !errors.Is(err, io.EOF) {
				t.Errorf("%q: err %v, want EOF", tc.in, err)
			}
			continue
		}
		if rest, _ := io.ReadAll(br); string(rest) != tc.rest {
			t.Errorf("%q: rest %q, want %q", tc.in, rest, tc.rest)
		}
	}
}
