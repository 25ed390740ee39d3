package registry_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/internal/testregistry"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
)

var old = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newClient(opts ...registry.Option) *registry.Client {
	return registry.New(append([]registry.Option{registry.WithTransport(http.DefaultTransport)}, opts...)...)
}

func resolve(t *testing.T, c *registry.Client, ref name.Reference) (*policy.Image, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	return c.Resolve(ctx, registry.Request{Ref: ref, Insecure: true})
}

func TestResolveImage(t *testing.T) {
	reg := testregistry.New(t)
	img := testregistry.Build(t, testregistry.Image{
		Created: old,
		Steps:   []string{"/bin/sh -c #(nop) ADD file:abc in /", "RUN /bin/sh -c apk add curl # buildkit"},
		Labels:  map[string]string{"org.opencontainers.image.source": "https://github.com/acme/shop"},
	})
	d := reg.Push(t, "acme/shop:1.4", img)
	cfgDigest, _ := img.ConfigName()

	got, err := resolve(t, newClient(), reg.Ref(t, "acme/shop:1.4"))
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	want := &policy.Image{
		Digest: d.String(),
		Platforms: []policy.Platform{{
			Digest:       d.String(),
			ConfigDigest: cfgDigest.String(),
			Created:      old,
			History: []policy.History{
				{Created: old, CreatedBy: "/bin/sh -c #(nop) ADD file:abc in /", EmptyLayer: true},
				{Created: old, CreatedBy: "RUN /bin/sh -c apk add curl # buildkit", EmptyLayer: true},
			},
		}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Resolve (-want +got):\n%s", diff)
	}
}

// TestRoundTrips pins down what a lookup costs the registry: a tag is
// resolved with HEAD, a digest-pinned image costs two requests once the
// repository's handshake is done, and a cached image costs nothing.
func TestRoundTrips(t *testing.T) {
	reg := testregistry.New(t)
	d1 := reg.Push(t, "acme/shop:1", testregistry.Build(t, testregistry.Image{Created: old}))
	d2 := reg.Push(t, "acme/shop:2", testregistry.Build(t, testregistry.Image{Created: old}))
	reg.Reset()
	c := newClient()

	if _, err := resolve(t, c, reg.Ref(t, "acme/shop:1")); err != nil {
		t.Fatal(err)
	}
	got := reg.Requests()
	want := []string{
		"GET /v2/",
		"HEAD /v2/acme/shop/manifests/1",
		"GET /v2/acme/shop/manifests/" + d1.String(),
	}
	if len(got) != 4 || !strings.HasPrefix(got[3], "GET /v2/acme/shop/blobs/sha256:") {
		t.Errorf("cold tag lookup requests = %q, want %q then the config blob", got, want)
	} else if diff := cmp.Diff(want, got[:3]); diff != "" {
		t.Errorf("cold tag lookup requests before the config blob (-want +got):\n%s", diff)
	}

	reg.Reset()
	if _, err := resolve(t, c, reg.Ref(t, "acme/shop@"+d2.String())); err != nil {
		t.Fatal(err)
	}
	if got := reg.Requests(); len(got) != 2 || got[0] != "GET /v2/acme/shop/manifests/"+d2.String() {
		t.Errorf("digest-pinned lookup requests = %q, want manifest and config: 2", got)
	}

	reg.Reset()
	for _, r := range []string{"acme/shop:1", "acme/shop@" + d1.String(), "acme/shop@" + d2.String()} {
		if _, err := resolve(t, c, reg.Ref(t, r)); err != nil {
			t.Fatal(err)
		}
	}
	if got := reg.Requests(); len(got) != 0 {
		t.Errorf("cached lookups made requests %q, want none", got)
	}
}

func TestTagTTL(t *testing.T) {
	reg := testregistry.New(t)
	reg.Push(t, "acme/shop:1", testregistry.Build(t, testregistry.Image{Created: old}))
	clock := clocktest.New(old)
	c := newClient(registry.WithClock(clock), registry.WithTagTTL(30*time.Second))
	ref := reg.Ref(t, "acme/shop:1")
	if _, err := resolve(t, c, ref); err != nil {
		t.Fatal(err)
	}
	// The tag moves; within the TTL the old resolution stands.
	moved := reg.Push(t, "acme/shop:1", testregistry.Build(t, testregistry.Image{Created: old.Add(time.Hour)}))
	reg.Reset()
	clock.Advance(29 * time.Second)
	img, err := resolve(t, c, ref)
	if err != nil {
		t.Fatal(err)
	}
	if img.Digest == moved.String() || reg.Count() != 0 {
		t.Errorf("within TTL: digest %s after %d requests, want the old digest and no request", img.Digest, reg.Count())
	}
	clock.Advance(2 * time.Second)
	img, err = resolve(t, c, ref)
	if err != nil {
		t.Fatal(err)
	}
	if img.Digest != moved.String() {
		t.Errorf("after TTL: digest %s, want %s", img.Digest, moved)
	}
	if got := reg.Requests(); len(got) == 0 || got[0] != "HEAD /v2/acme/shop/manifests/1" {
		t.Errorf("after TTL requests = %q, want a HEAD first", got)
	}
}

// TestCoalescing: a rollout of 50 pods costs one fetch.
func TestCoalescing(t *testing.T) {
	reg := testregistry.New(t)
	d := reg.Push(t, "acme/shop:1", testregistry.Build(t, testregistry.Image{Created: old}))
	reg.Reset()
	c := newClient()
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Resolve(t.Context(), registry.Request{Ref: reg.Ref(t, "acme/shop:1"), Insecure: true})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	counts := map[string]int{}
	for _, r := range reg.Requests() {
		counts[r]++
	}
	if n := counts["HEAD /v2/acme/shop/manifests/1"]; n != 1 {
		t.Errorf("HEAD of the tag %d times, want 1 (requests: %v)", n, counts)
	}
	if n := counts["GET /v2/acme/shop/manifests/"+d.String()]; n != 1 {
		t.Errorf("GET of the manifest %d times, want 1 (requests: %v)", n, counts)
	}
}

func TestIndex(t *testing.T) {
	reg := testregistry.New(t)
	amd := testregistry.Build(t, testregistry.Image{Created: old, Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}})
	arm := testregistry.Build(t, testregistry.Image{Created: old.Add(time.Hour), Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}})
	d := reg.PushIndex(t, "acme/multi:1", true, amd, arm)

	got, err := resolve(t, newClient(), reg.Ref(t, "acme/multi:1"))
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != d.String() || !got.Index {
		t.Errorf("Resolve = digest %s index %v, want %s true", got.Digest, got.Index, d)
	}
	var pls []string
	for _, p := range got.Platforms {
		pls = append(pls, p.Platform+"@"+p.Created.Format(time.RFC3339))
	}
	want := []string{"linux/amd64@" + old.Format(time.RFC3339), "linux/arm64/v8@" + old.Add(time.Hour).Format(time.RFC3339)}
	if diff := cmp.Diff(want, pls); diff != "" {
		t.Errorf("platforms, the attestation manifest left out (-want +got):\n%s", diff)
	}
}

func TestErrors(t *testing.T) {
	reg := testregistry.New(t)
	reg.Push(t, "acme/shop:1", testregistry.Build(t, testregistry.Image{Created: old}))
	closed := testregistry.New(t)
	closed.Server.Close()

	tests := []struct {
		name     string
		ref      string
		insecure bool
		want     policy.ErrorKind
	}{
		{"missing tag", reg.Host + "/acme/shop:nope", true, policy.ErrNotFound},
		{"missing repository", reg.Host + "/acme/nothing:1", true, policy.ErrNotFound},
		{"missing digest", reg.Host + "/acme/shop@sha256:" + strings.Repeat("a", 64), true, policy.ErrNotFound},
		{"registry down", closed.Host + "/acme/shop:1", true, policy.ErrUnavailable},
		{"metadata address", "169.254.169.254/acme/shop:1", true, policy.ErrForbiddenAddress},
		{"plain HTTP not allowed", reg.Host + "/acme/shop:1", false, policy.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ref, err := name.ParseReference(tt.ref, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			reg.Reset()
			_, err = newClient().Resolve(t.Context(), registry.Request{Ref: ref, Insecure: tt.insecure})
			var re *policy.ResolveError
			if !errors.As(err, &re) || re.Kind != tt.want {
				t.Fatalf("Resolve(%s) error = %v, want kind %s", tt.ref, err, tt.want)
			}
			if !tt.insecure && reg.Count() != 0 {
				t.Errorf("plain HTTP refused, yet the registry saw %q", reg.Requests())
			}
		})
	}
}

func TestDeadline(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/acme/shop:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = newClient().Resolve(ctx, registry.Request{Ref: ref, Insecure: true})
	var re *policy.ResolveError
	if !errors.As(err, &re) || re.Kind != policy.ErrUnavailable {
		t.Fatalf("Resolve against a hanging registry = %v, want unavailable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Resolve took %s, want it to stop at the 200ms deadline", d)
	}
}

func TestPrivateRegistry(t *testing.T) {
	reg := testregistry.New(t, testregistry.WithBasicAuth("puller", "s3cret"))
	reg.Push(t, "acme/private:1", testregistry.Build(t, testregistry.Image{Created: old}))
	ref := reg.Ref(t, "acme/private:1")

	_, err := newClient().Resolve(t.Context(), registry.Request{Ref: ref, Insecure: true})
	var re *policy.ResolveError
	if !errors.As(err, &re) || re.Kind != policy.ErrUnauthorized {
		t.Errorf("anonymous Resolve = %v, want unauthorized", err)
	}

	kc := staticKeychain{reg.Host: &authn.Basic{Username: "puller", Password: "s3cret"}}
	img, err := newClient().Resolve(t.Context(), registry.Request{Ref: ref, Insecure: true, Auth: registry.Auth{Key: "test", Keychain: kc}})
	if err != nil {
		t.Fatalf("Resolve with credentials: %v", err)
	}
	if img.Platforms[0].Created != old {
		t.Errorf("created = %s, want %s", img.Platforms[0].Created, old)
	}
}

type staticKeychain map[string]authn.Authenticator

func (k staticKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if a, ok := k[r.RegistryStr()]; ok {
		return a, nil
	}
	return authn.Anonymous, nil
}

// TestCached: Cached answers from the caches only, as Resolve would, and
// never contacts the registry.
func TestCached(t *testing.T) {
	reg := testregistry.New(t)
	d := reg.Push(t, "acme/shop:1", testregistry.Build(t, testregistry.Image{Created: old}))
	clock := clocktest.New(old)
	c := newClient(registry.WithClock(clock), registry.WithTagTTL(30*time.Second))
	tag, byDigest := reg.Ref(t, "acme/shop:1"), reg.Ref(t, "acme/shop@"+d.String())
	cached := func(ref name.Reference) (*policy.Image, bool) {
		return c.Cached(registry.Request{Ref: ref, Insecure: true})
	}
	reg.Reset()
	if img, ok := cached(tag); ok || reg.Count() != 0 {
		t.Fatalf("Cached(tag) before any lookup = %v, %v after %d requests; want false and none", img, ok, reg.Count())
	}
	want, err := resolve(t, c, tag)
	if err != nil {
		t.Fatal(err)
	}
	reg.Reset()
	for _, ref := range []name.Reference{tag, byDigest} {
		if img, ok := cached(ref); !ok || img != want {
			t.Errorf("Cached(%v) = %v, %v; want the image Resolve returned", ref, img, ok)
		}
	}
	clock.Advance(31 * time.Second) // the tag's resolution expires, the image stays
	if img, ok := cached(tag); ok {
		t.Errorf("Cached(%v) after the tag TTL = %v, true; want false", tag, img)
	}
	if img, ok := cached(byDigest); !ok || img != want {
		t.Errorf("Cached(%v) after the tag TTL = %v, %v; want the image", byDigest, img, ok)
	}
	if n := reg.Count(); n != 0 {
		t.Errorf("Cached made %d registry requests, want none", n)
	}
}

// TestImagesShareStrings: two images with the same build steps and run
// config, looked up one after the other, hold one copy of each.
func TestImagesShareStrings(t *testing.T) {
	reg := testregistry.New(t)
	steps := []string{"/bin/sh -c #(nop) ADD file:abc in /", "RUN /bin/sh -c apk add curl # buildkit"}
	reg.Push(t, "acme/shop:1", testregistry.Build(t, testregistry.Image{Created: old, Steps: steps}))
	reg.Push(t, "acme/cart:1", testregistry.Build(t, testregistry.Image{Created: old.Add(time.Hour), Steps: steps}))
	c := newClient()
	a, err := resolve(t, c, reg.Ref(t, "acme/shop:1"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := resolve(t, c, reg.Ref(t, "acme/cart:1"))
	if err != nil {
		t.Fatal(err)
	}
	ha, hb := a.Platforms[0].History, b.Platforms[0].History
	if len(ha) != len(steps) || len(hb) != len(steps) {
		t.Fatalf("histories of %d and %d steps, want %d", len(ha), len(hb), len(steps))
	}
	for i := range steps {
		if ha[i].CreatedBy != steps[i] || unsafe.StringData(ha[i].CreatedBy) != unsafe.StringData(hb[i].CreatedBy) {
			t.Errorf("step %d: %q and %q are two copies, want one of %q", i, ha[i].CreatedBy, hb[i].CreatedBy, steps[i])
		}
	}
}
