// Package testregistry runs go-containerregistry's in-memory registry on a
// loopback listener for tests, counts the requests it receives, and
// pushes images with a chosen created time and build history.
package testregistry

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Registry is an in-memory registry served over plain HTTP on 127.0.0.1.
type Registry struct {
	Server *httptest.Server
	// Host is "127.0.0.1:port".
	Host string

	mu        sync.Mutex
	requests  []string // "METHOD path"
	user      string
	password  string
	referrers bool
}

// Option configures a Registry.
type Option func(*Registry)

// WithBasicAuth makes the registry require these credentials.
func WithBasicAuth(user, password string) Option {
	return func(r *Registry) { r.user, r.password = user, password }
}

// WithReferrers makes the registry serve the OCI 1.1 referrers API. The
// default is a registry without it, where referrers live in the
// referrers tag schema (sha256-<hex> tags).
func WithReferrers() Option {
	return func(r *Registry) { r.referrers = true }
}

// New starts a registry that is closed when the test ends.
func New(t testing.TB, opts ...Option) *Registry {
	t.Helper()
	r := &Registry{}
	for _, o := range opts {
		o(r)
	}
	ropts := []ggcrregistry.Option{ggcrregistry.Logger(log.New(io.Discard, "", 0))}
	if r.referrers {
		ropts = append(ropts, ggcrregistry.WithReferrersSupport(true))
	}
	inner := ggcrregistry.New(ropts...)
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.requests = append(r.requests, req.Method+" "+req.URL.Path)
		r.mu.Unlock()
		if r.user != "" {
			u, p, ok := req.BasicAuth()
			if !ok || u != r.user || p != r.password {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
		}
		inner.ServeHTTP(w, req)
	}))
	t.Cleanup(r.Server.Close)
	r.Host = strings.TrimPrefix(r.Server.URL, "http://")
	return r
}

// Requests returns the requests received so far, as "METHOD path".
func (r *Registry) Requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.requests...)
}

// Reset forgets the requests received so far.
func (r *Registry) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests = nil
}

// Count returns how many requests were received so far.
func (r *Registry) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.requests)
}

// Image describes an image to build.
type Image struct {
	Created time.Time
	// Steps are history created_by entries, one per Dockerfile step.
	Steps    []string
	Labels   map[string]string
	Platform *v1.Platform
	// Env, Entrypoint and Cmd are the config's run command and
	// environment; nil leaves them empty.
	Env, Entrypoint, Cmd []string
}

// Build makes a random single-layer image with the given config.
func Build(t testing.TB, spec Image) v1.Image {
	t.Helper()
	img, err := MakeImage(spec)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// MakeImage makes a random single-layer image with the given config.
func MakeImage(spec Image) (v1.Image, error) {
	img, err := random.Image(256, 1)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: spec.Created}
	cf.History = nil
	for _, s := range spec.Steps {
		cf.History = append(cf.History, v1.History{Created: v1.Time{Time: spec.Created}, CreatedBy: s, EmptyLayer: true})
	}
	cf.Config.Labels = spec.Labels
	cf.Config.Env, cf.Config.Entrypoint, cf.Config.Cmd = spec.Env, spec.Entrypoint, spec.Cmd
	if spec.Platform != nil {
		cf.OS, cf.Architecture, cf.Variant = spec.Platform.OS, spec.Platform.Architecture, spec.Platform.Variant
	}
	return mutate.ConfigFile(img, cf)
}

// Ref parses "host/repo:tag" relative to this registry, as an insecure
// (plain HTTP) reference.
func (r *Registry) Ref(t testing.TB, repoAndTag string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(r.Host+"/"+repoAndTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// Push writes img under repoAndTag ("repo:tag") and returns its digest.
func (r *Registry) Push(t testing.TB, repoAndTag string, img v1.Image) v1.Hash {
	t.Helper()
	if err := remote.Write(r.Ref(t, repoAndTag), img, r.auth()); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// PushIndex writes a multi-platform index of imgs under repoAndTag, plus,
// when attestation is set, a BuildKit attestation manifest, and returns
// the index digest.
func (r *Registry) PushIndex(t testing.TB, repoAndTag string, attestation bool, imgs ...v1.Image) v1.Hash {
	t.Helper()
	var idx v1.ImageIndex = empty.Index
	idx = mutate.IndexMediaType(idx, types.OCIImageIndex)
	for _, img := range imgs {
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant}},
		})
	}
	if attestation {
		att, err := random.Image(64, 1)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := imgs[0].Digest()
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add: att,
			Descriptor: v1.Descriptor{
				Platform:    &v1.Platform{OS: "unknown", Architecture: "unknown"},
				Annotations: map[string]string{"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": d.String()},
			},
		})
	}
	if err := remote.WriteIndex(r.Ref(t, repoAndTag), idx, r.auth()); err != nil {
		t.Fatal(err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (r *Registry) auth() remote.Option {
	if r.user == "" {
		return remote.WithTransport(http.DefaultTransport)
	}
	return remote.WithAuth(&authn.Basic{Username: r.user, Password: r.password})
}
