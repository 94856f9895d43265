package docgen

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/kilnvm/kiln/internal/api"
)

func testTree() *cobra.Command {
	root := &cobra.Command{Use: "tool", Short: "A tool"}
	root.PersistentFlags().Bool("json", false, "print JSON")
	grp := &cobra.Command{Use: "box", Short: "Manage boxes", Aliases: []string{"b"}}
	mk := &cobra.Command{Use: "make NAME", Short: "Make a box", RunE: func(*cobra.Command, []string) error { return nil }}
	mk.Flags().Int("size", 3, "size of the box")
	mk.Flags().String("secret", "", "not shown")
	_ = mk.Flags().MarkHidden("secret")
	hidden := &cobra.Command{Use: "internal", Short: "Internal", Hidden: true, RunE: mk.RunE}
	grp.AddCommand(mk)
	root.AddCommand(grp, hidden)
	return root
}

func TestCLI(t *testing.T) {
	out := string(CLI(testTree()))
	for _, want := range []string{
		Header,
		"# tool command reference",
		"--json   print JSON",
		"- [`tool box make`](#tool-box-make) — Make a box",
		"## tool box\n\nManage boxes\n\n```\ntool box COMMAND\n```",
		"Aliases: `b`",
		"## tool box make\n\nMake a box\n\n```\ntool box make NAME [flags]\n```",
		"--size int   size of the box (default 3)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("CLI reference lacks %q:\n%s", want, out)
		}
	}
	for _, bad := range []string{"internal", "secret", "--help"} {
		if strings.Contains(out, bad) {
			t.Errorf("CLI reference shows %q, which is hidden:\n%s", bad, out)
		}
	}
	if string(CLI(testTree())) != out {
		t.Error("CLI output is not deterministic")
	}
}

func TestAPI(t *testing.T) {
	out := string(API([]Route{{"GET", "/v1/things/{name}", "read"}, {"POST", "/v1/things", "write"}}))
	for _, want := range []string{
		"| GET | `/v1/things/{name}` | read |",
		"| POST | `/v1/things` | write |",
		"| `not_found` | 404 Not Found | 10 |",
		"| `internal` | 500 Internal Server Error | 1 |",
		"| `canceled` | 499 client closed request | 17 |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("API reference lacks %q:\n%s", want, out)
		}
	}
	for _, c := range api.Classes() {
		if !strings.Contains(out, "| `"+string(c)+"` |") {
			t.Errorf("error table lacks class %s", c)
		}
	}
}

func TestDiff(t *testing.T) {
	for _, tc := range []struct {
		name, got, want, diff string
	}{
		{"equal", "a\nb\n", "a\nb\n", ""},
		{"changed", "a\nb\n", "a\nc\n", `line 2: committed "b", generated "c"`},
		{"longer", "a\n", "a\nb\n", `line 2: committed "", generated "b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if d := Diff([]byte(tc.got), []byte(tc.want)); d != tc.diff {
				t.Errorf("Diff = %q, want %q", d, tc.diff)
			}
		})
	}
}
