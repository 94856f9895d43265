package image

import (
	"errors"
	"net/http"
	"testing"

	"github.com/kilnvm/kiln/internal/api"
)

type refuseAll struct{}

func (refuseAll) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("reached the network")
}

// TestPlainHTTPOnlyToLoopback: plain HTTP is refused to any registry but
// a loopback one; HTTPS and loopback HTTP go through.
func TestPlainHTTPOnlyToLoopback(t *testing.T) {
	tr := loopbackOnlyHTTP{next: refuseAll{}}
	for url, refused := range map[string]bool{
		"http://10.0.0.1:5000/v2/":    true,
		"http://registry.example/v2/": true,
		"http://127.0.0.1:5000/v2/":   false,
		"http://localhost:5000/v2/":   false,
		"http://[::1]:5000/v2/":       false,
		"https://10.0.0.1:5000/v2/":   false,
	} {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		_, err := tr.RoundTrip(req)
		if got := errors.Is(err, api.ErrBadRequest); got != refused {
			t.Errorf("%s: %v (refused %v, want %v)", url, err, got, refused)
		}
	}
}
