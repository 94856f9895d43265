// Package ocitest serves an in-process OCI registry on loopback
// (go-containerregistry's pkg/registry) and pushes crafted multi-layer
// images into it, for tests of kiln's OCI pull.
package ocitest

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Registry is a running in-process registry.
type Registry struct {
	// Host is "127.0.0.1:port".
	Host      string
	blobGets  atomic.Int64
	blobBytes atomic.Int64
	// corrupt is the digest ("sha256:...") of a blob served with its
	// last byte flipped, or "".
	corrupt atomic.Value
}

// Corrupt makes r serve the blob digest ("sha256:...") with its last byte
// flipped (same size, other content) until Corrupt(""), as a tampering
// registry or a broken proxy would.
func (r *Registry) Corrupt(digest string) { r.corrupt.Store(digest) }

// BlobGets is how many blob downloads (GET .../blobs/...) were served.
func (r *Registry) BlobGets() int64 { return r.blobGets.Load() }

// Serve starts a registry on 127.0.0.1, stopped when the test ends.
func Serve(t testing.TB) *Registry {
	t.Helper()
	r := &Registry{}
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
			r.blobGets.Add(1)
			if d, _ := r.corrupt.Load().(string); d != "" && strings.HasSuffix(req.URL.Path, "/blobs/"+d) {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				body := rec.Body.Bytes()
				if len(body) > 0 {
					body[len(body)-1] ^= 0xff
				}
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				_, _ = w.Write(body)
				return
			}
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.Host = strings.TrimPrefix(srv.URL, "http://")
	return r
}

// Entry is one entry of a crafted layer; Body is a regular file's content.
type Entry struct {
	tar.Header
	Body string
}

// File, Dir, Symlink, Hardlink and Whiteout make entries (root-owned,
// mode as given).
func File(name, body string, mode int64) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body))}, Body: body}
}
func Dir(name string, mode int64) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
}
func Symlink(name, target string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}
func Hardlink(name, target string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target}}
}
func Whiteout(name string) Entry { return File(name, "", 0o644) }

// Owned sets an entry's owner.
func (e Entry) Owned(uid, gid int) Entry { e.Uid, e.Gid = uid, gid; return e }

// Tar writes entries as an uncompressed tar stream.
func Tar(t testing.TB, ents ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := e.Header
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 0)
		}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %s: %v", h.Name, err)
		}
		if _, err := tw.Write([]byte(e.Body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Image makes an image of the given layers (uncompressed tar streams,
// gzipped on push), oldest first, with cfg as its runtime config.
func Image(t testing.TB, cfg v1.Config, layers ...[]byte) v1.Image {
	t.Helper()
	ls := make([]Layer, len(layers))
	for i, l := range layers {
		ls[i] = Gzip(l)
	}
	return build(t, cfg, false, ls)
}

// Layer is one layer of ImageOf: a tar stream and how it is compressed on
// push. A Tar that is already gzip or zstd is pushed as it is.
type Layer struct {
	Tar  []byte
	Zstd bool
}

// Gzip and Zstd make a layer of ImageOf from a tar stream, compressed
// with gzip (media type application/vnd.oci.image.layer.v1.tar+gzip) or
// zstd (application/vnd.oci.image.layer.v1.tar+zstd).
func Gzip(tar []byte) Layer { return Layer{Tar: tar} }
func Zstd(tar []byte) Layer { return Layer{Tar: tar, Zstd: true} }

// ImageOf makes an OCI image (OCI manifest and media types) of the given
// layers, oldest first, with cfg as its runtime config.
func ImageOf(t testing.TB, cfg v1.Config, layers ...Layer) v1.Image {
	t.Helper()
	return build(t, cfg, true, layers)
}

func build(t testing.TB, cfg v1.Config, oci bool, layers []Layer) v1.Image {
	t.Helper()
	img := empty.Image
	if oci {
		img = mutate.MediaType(img, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	}
	for _, l := range layers {
		data := l.Tar
		var opts []tarball.LayerOption
		switch {
		case l.Zstd:
			opts = append(opts, tarball.WithCompression(compression.ZStd), tarball.WithMediaType(types.OCILayerZStd))
		case oci:
			opts = append(opts, tarball.WithMediaType(types.OCILayer))
		}
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			t.Fatal(err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", "amd64", cfg
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// Push pushes img to repoTag ("kiln/test:1") on r and returns its full
// reference.
func (r *Registry) Push(t testing.TB, repoTag string, img v1.Image) string {
	t.Helper()
	ref, err := name.ParseReference(r.Host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref.String()
}
