package daemon

import (
	"slices"
	"testing"

	"github.com/kilnvm/kiln/internal/image"
)

func TestImageRuntime(t *testing.T) {
	env, wd := imageRuntime(nil)
	if env != nil || wd != "" {
		t.Errorf("nil config: %q %q", env, wd)
	}
	env, wd = imageRuntime(&image.RuntimeConfig{
		Env:        []string{"PATH=/opt/bin:/bin", "FOO=a=b", "=bad", "NOEQUALS", "NUL=a\x00b", "EMPTY="},
		WorkingDir: "/srv/app/",
		User:       "1000", Cmd: []string{"sh"},
	})
	if want := []string{"PATH=/opt/bin:/bin", "FOO=a=b", "EMPTY="}; !slices.Equal(env, want) {
		t.Errorf("env %q, want %q", env, want)
	}
	if wd != "/srv/app" {
		t.Errorf("workdir %q", wd)
	}
	if _, wd := imageRuntime(&image.RuntimeConfig{WorkingDir: "srv"}); wd != "" {
		t.Errorf("relative workdir kept: %q", wd)
	}
}
