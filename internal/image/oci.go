package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/kilnvm/kiln/internal/api"
)

// MaxLayers caps the layers of a pulled image (Docker's own limit is 127).
const MaxLayers = 256

// RuntimeConfig is the part of an OCI image's config that says how its
// processes run; it is recorded in image.json.
type RuntimeConfig struct {
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
}

// PullProgress reports how far a pull has come.
type PullProgress struct {
	// Stage is "resolve", "download", "extract" or "build ext4".
	Stage               string
	Layers, LayersDone  int
	Bytes, BytesDone    int64
	CachedLayers        int
	ManifestDigest, Ref string
}

// String is a one-line summary for progress displays.
func (p PullProgress) String() string {
	switch p.Stage {
	case "download", "extract":
		return fmt.Sprintf("layer %d/%d, %s/%s", p.LayersDone, p.Layers, mib(p.BytesDone), mib(p.Bytes))
	}
	return p.Ref
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// WithRegistryTransport sets the HTTP transport for registry access
// (default: go-containerregistry's). Plain HTTP is refused to any host but
// loopback either way.
func WithRegistryTransport(t http.RoundTripper) Option {
	return func(s *Store) { s.transport = t }
}

// WithCacheDir sets the directory of the OCI blob cache (an OCI image
// layout); the default is <store>/.oci-cache.
func WithCacheDir(dir string) Option { return func(s *Store) { s.cacheDir = dir } }

// WithKeychain sets where registry credentials come from (default: the
// Docker config of the daemon's user, then anonymous).
func WithKeychain(k authn.Keychain) Option { return func(s *Store) { s.keychain = k } }

// CacheDir is the OCI blob cache directory.
func (s *Store) CacheDir() string { return s.cacheDir }

// loopbackOnlyHTTP refuses plain-HTTP requests to anything but a loopback
// registry: credentials and layers must not cross a network in the clear.
type loopbackOnlyHTTP struct{ next http.RoundTripper }

func (t loopbackOnlyHTTP) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !isLoopbackHost(req.URL.Hostname()) {
		return nil, fmt.Errorf("refusing plain HTTP to %s: only loopback registries may be used without TLS: %w", req.URL.Host, api.ErrBadRequest)
	}
	return t.next.RoundTrip(req)
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// ParseRef parses an OCI image reference ("debian:bookworm",
// "ghcr.io/o/r@sha256:..."); Docker Hub is the default registry.
func ParseRef(ref string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %v: %w", ref, err, api.ErrBadRequest)
	}
	return r, nil
}

var nonName = regexp.MustCompile(`[^a-z0-9]+`)

// NameFromRef derives an image name from a reference: the last path
// component of the repository, plus the tag unless it is "latest"
// ("debian:bookworm" → "debian-bookworm", "ghcr.io/o/tool" → "tool").
func NameFromRef(ref string) (string, error) {
	r, err := ParseRef(ref)
	if err != nil {
		return "", err
	}
	repo := r.Context().RepositoryStr()
	n := repo[strings.LastIndex(repo, "/")+1:]
	if t, ok := r.(name.Tag); ok && t.TagStr() != "latest" {
		n += "-" + t.TagStr()
	}
	n = strings.Trim(nonName.ReplaceAllString(strings.ToLower(n), "-"), "-")
	if len(n) > 63 {
		n = strings.Trim(n[:63], "-")
	}
	if err := api.ValidateName("image", n); err != nil {
		return "", fmt.Errorf("derive an image name from %q: %w; name it with --name", ref, err)
	}
	return n, nil
}

// PullOCI pulls the OCI image ref (platform linux/<host arch>), flattens
// its layers oldest first and builds the image name from the result, with
// the image's runtime config recorded. Layers may be gzip, zstd or plain
// tar, whatever their media type says (the content is sniffed), within the
// Store's Limits once decompressed. Layers are cached by digest in the
// blob cache, downloaded a few at a time and verified against their
// digests as they are written; each is applied, in order, once its
// verified blob is in place, while later ones still download. A layer
// found already in the cache is verified again as it is read back.
//
// Concurrent pulls of one name coalesce: the work is done once and every
// caller gets its result (shared reports that this caller joined another's
// pull). A caller whose ctx ends stops waiting; the work itself is
// cancelled only when every caller has gone. Pulling a name that another
// pull of a different ref is making is api.ErrConflict.
func (s *Store) PullOCI(ctx context.Context, imgName, ref string, opts BuildOptions, progress func(PullProgress)) (img Image, shared bool, err error) {
	r, err := ParseRef(ref)
	if err != nil {
		return Image{}, false, err
	}
	if err := s.validate(imgName, opts); err != nil {
		return Image{}, false, err
	}
	return s.pulls.do(ctx, imgName, r.String()+"|"+fmt.Sprint(opts), progress, func(ctx context.Context, report func(PullProgress)) (Image, error) {
		return s.pull(ctx, imgName, r, opts, report)
	})
}

func (s *Store) pull(ctx context.Context, imgName string, ref name.Reference, opts BuildOptions, report func(PullProgress)) (Image, error) {
	s.cacheMu.RLock()
	defer s.cacheMu.RUnlock()
	p := PullProgress{Stage: "resolve", Ref: ref.String()}
	report(p)
	cache, err := s.openCache()
	if err != nil {
		return Image{}, err
	}
	remoteImg, err := remote.Image(ref,
		remote.WithContext(ctx),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}),
		remote.WithAuthFromKeychain(s.keychain),
		remote.WithTransport(loopbackOnlyHTTP{next: s.transport}),
		remote.WithUserAgent("kiln"))
	if err != nil {
		return Image{}, registryError(fmt.Sprintf("resolve %s", ref), err)
	}
	digest, err := remoteImg.Digest()
	if err != nil {
		return Image{}, registryError(fmt.Sprintf("manifest of %s", ref), err)
	}
	cf, err := remoteImg.ConfigFile()
	if err != nil {
		return Image{}, registryError(fmt.Sprintf("config of %s", ref), err)
	}
	if cf.OS != "" && cf.OS != "linux" {
		return Image{}, fmt.Errorf("image %s is for %s, not linux: %w", ref, cf.OS, api.ErrBadRequest)
	}
	layers, err := remoteImg.Layers()
	if err != nil {
		return Image{}, registryError(fmt.Sprintf("layers of %s", ref), err)
	}
	if len(layers) > MaxLayers {
		return Image{}, fmt.Errorf("image %s has %d layers, more than the limit of %d: %w", ref, len(layers), MaxLayers, api.ErrBadRequest)
	}
	infos := make([]layerInfo, len(layers))
	p.Layers = len(layers)
	for i, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return Image{}, registryError("layer digest", err)
		}
		sz, err := l.Size()
		if err != nil {
			return Image{}, registryError("layer size", err)
		}
		if d.Algorithm != "sha256" || len(d.Hex) != 64 {
			return Image{}, fmt.Errorf("layer %d of %s: unsupported digest %s: %w", i+1, ref, d, api.ErrBadRequest)
		}
		if sz < 0 || sz > s.limits.withDefaults().MaxTotalSize || p.Bytes+sz > s.limits.withDefaults().MaxTotalSize {
			return Image{}, fmt.Errorf("image %s: layer %d claims %d bytes, over the limit of %d: %w", ref, i+1, sz, s.limits.withDefaults().MaxTotalSize, api.ErrBadRequest)
		}
		infos[i] = layerInfo{layer: l, digest: d, size: sz}
		p.Bytes += sz
	}
	p.ManifestDigest = digest.String()
	s.log.Info("image: pulling", "image", imgName, "ref", ref.String(), "digest", digest.String(), "layers", len(layers), "bytes", p.Bytes)

	// Layers download in the background, a few at a time, while the
	// extraction applies each one, in order, as soon as it is in the cache
	// with its digest checked. A failed download fails the pull and the
	// staging tree is discarded: nothing is committed.
	p.Stage = "download"
	report(p)
	var pmu sync.Mutex // p and report are shared with the downloads
	update := func(f func(*PullProgress)) {
		pmu.Lock()
		defer pmu.Unlock()
		f(&p)
		report(p)
	}
	dl := startDownloads(ctx, cache, infos, ref.String(), &p, &pmu, update)
	defer dl.stop()
	// Wait for the first layer before making a staging tree: a registry
	// that fails at once costs no extraction work.
	if len(infos) > 0 {
		if err := dl.wait(0); err != nil {
			return Image{}, err
		}
	}

	if opts.Source == "" {
		opts.Source = "oci:" + ref.String() + "@" + digest.String()
	}
	opts.Digest = digest.String()
	opts.Config = &RuntimeConfig{
		Env: cf.Config.Env, WorkingDir: cf.Config.WorkingDir, User: cf.Config.User,
		Entrypoint: cf.Config.Entrypoint, Cmd: cf.Config.Cmd,
	}
	return s.build(ctx, imgName, opts, func(ctx context.Context, tree string) error {
		x, err := NewExtractor(tree, s.limits)
		if err != nil {
			return err
		}
		update(func(p *PullProgress) { p.Stage, p.LayersDone = "extract", 0 })
		for i, li := range infos {
			if err := dl.wait(i); err != nil {
				x.Close()
				return err
			}
			// A blob this pull just downloaded had its digest checked as
			// it was written; one found in the cache is checked again
			// while it is applied.
			if err := cache.apply(ctx, x, li.digest, li.size, !dl.fetched(i)); err != nil {
				x.Close()
				return fmt.Errorf("layer %d/%d (%s): %w", i+1, len(infos), li.digest, err)
			}
			update(func(p *PullProgress) { p.LayersDone = i + 1 })
		}
		st := x.Stats()
		if err := x.Close(); err != nil {
			return err
		}
		s.log.Debug("image: layers flattened", "image", imgName, "entries", st.Entries, "bytes", st.Bytes, "whiteouts", st.Whiteouts, "xattrs_skipped", st.XattrsSkipped)
		update(func(p *PullProgress) { p.Stage = "build ext4" })
		return nil
	})
}

// registryError classes a registry failure: a missing repository, tag or
// blob is api.ErrNotFound, refused credentials api.ErrFailedPrecondition,
// a bad reference api.ErrBadRequest, anything else api.ErrUnavailable.
func registryError(what string, err error) error {
	if api.ClassOf(err) != api.ClassInternal {
		return fmt.Errorf("%s: %w", what, err)
	}
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusNotFound:
			return fmt.Errorf("%s: %v: %w", what, err, api.ErrNotFound)
		case http.StatusUnauthorized, http.StatusForbidden:
			return api.Hinted(fmt.Errorf("%s: %v: %w", what, err, api.ErrFailedPrecondition),
				"log in with `docker login` (kiln reads the Docker config of the daemon's user)")
		}
		for _, d := range te.Errors {
			if d.Code == transport.ManifestUnknownErrorCode || d.Code == transport.NameUnknownErrorCode || d.Code == transport.BlobUnknownErrorCode {
				return fmt.Errorf("%s: %v: %w", what, err, api.ErrNotFound)
			}
		}
	}
	if strings.Contains(err.Error(), "no child with platform") {
		return fmt.Errorf("%s: %v: %w", what, err, api.ErrNotFound)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%s: %v: %w", what, err, api.ErrUnavailable)
}

// blobCache is the OCI image layout that holds downloaded layers.
type blobCache struct {
	path layout.Path
	dir  string
}

// openCache opens the blob cache, creating an empty OCI layout if needed.
func (s *Store) openCache() (*blobCache, error) {
	if _, err := os.Stat(filepath.Join(s.cacheDir, "index.json")); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(s.cacheDir, 0o700); err != nil {
			return nil, fmt.Errorf("create blob cache: %w", err)
		}
		if _, err := layout.Write(s.cacheDir, empty.Index); err != nil {
			return nil, fmt.Errorf("create blob cache: %w", err)
		}
	}
	p, err := layout.FromPath(s.cacheDir)
	if err != nil {
		return nil, fmt.Errorf("open blob cache: %w", err)
	}
	return &blobCache{path: p, dir: s.cacheDir}, nil
}

func (c *blobCache) blobPath(h v1.Hash) string {
	return filepath.Join(c.dir, "blobs", h.Algorithm, h.Hex)
}

func (c *blobCache) blobSize(h v1.Hash) (int64, error) {
	fi, err := os.Stat(c.blobPath(h))
	if err != nil {
		return -1, err
	}
	return fi.Size(), nil
}

// fetch downloads one blob into the cache through a temporary file, and
// keeps it only if its size and sha256 are those the manifest names.
func (c *blobCache) fetch(ctx context.Context, h v1.Hash, size int64, open func() (io.ReadCloser, error), counted func(int64)) error {
	dir := filepath.Dir(c.blobPath(h))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	rc, err := open()
	if err != nil {
		return registryError("open blob", err)
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(dir, ".partial-")
	if err != nil {
		return err
	}
	keep := false
	defer func() {
		if !keep {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	hr := &hashingReader{r: rc, h: sha256.New(), limit: size, ctx: ctx, counted: counted}
	if _, err := io.Copy(tmp, hr); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, api.ErrBadRequest) {
			return err
		}
		return registryError("download", err)
	}
	if err := hr.check(h); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), c.blobPath(h)); err != nil {
		return err
	}
	keep = true
	return nil
}

// apply reads a cached layer and applies it to x. With verify, the blob is
// checked against its digest as it is read (a blob found in the cache);
// without, only its size is (a blob fetch has just written and checked).
func (c *blobCache) apply(ctx context.Context, x *Extractor, h v1.Hash, size int64, verify bool) error {
	f, err := os.Open(c.blobPath(h))
	if err != nil {
		return fmt.Errorf("open cached layer: %w", err)
	}
	defer f.Close()
	hr := &hashingReader{r: f, limit: size, ctx: ctx}
	if verify {
		hr.h = sha256.New()
	}
	tr, err := decompress(hr, x.lim)
	if err != nil {
		return err
	}
	defer tr.Close()
	if err := x.ApplyLayer(ctx, tr); err != nil {
		return err
	}
	// The tar stream may end before its compressed container does: read
	// the rest so the digest covers every byte. Only maxTrailer of it is
	// decompressed (tar padding), so a bomb of zeros after the tar's end is
	// never inflated; the digest check covers the compressed bytes past it.
	if _, err := io.CopyN(io.Discard, tr, maxTrailer); err != nil && err != io.EOF {
		return fmt.Errorf("read layer to its end: %w", err)
	}
	if _, err := io.Copy(io.Discard, hr); err != nil {
		return err
	}
	return hr.check(h)
}

// hashingReader hashes what it reads and refuses to read past limit.
type hashingReader struct {
	r       io.Reader
	h       hash.Hash
	n       int64
	limit   int64
	ctx     context.Context
	counted func(int64)
	last    time.Time
	pending int64
}

func (r *hashingReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := r.r.Read(p)
	if r.h != nil {
		r.h.Write(p[:n])
	}
	r.n += int64(n)
	if r.n > r.limit {
		return n, fmt.Errorf("blob is larger than the %d bytes its descriptor names: %w", r.limit, api.ErrBadRequest)
	}
	if r.counted != nil {
		r.pending += int64(n)
		if now := time.Now(); err != nil || now.Sub(r.last) > 200*time.Millisecond {
			r.counted(r.pending)
			r.pending, r.last = 0, now
		}
	}
	return n, err
}

func (r *hashingReader) check(want v1.Hash) error {
	if r.counted != nil && r.pending > 0 {
		r.counted(r.pending)
		r.pending = 0
	}
	if r.n != r.limit {
		return fmt.Errorf("blob %s: got %d bytes, its descriptor names %d: %w", want, r.n, r.limit, api.ErrBadRequest)
	}
	if r.h == nil {
		return nil // the size alone: the content was checked when written
	}
	if got := hex.EncodeToString(r.h.Sum(nil)); got != want.Hex {
		return fmt.Errorf("blob %s: content has digest sha256:%s: %w", want, got, api.ErrBadRequest)
	}
	return nil
}
