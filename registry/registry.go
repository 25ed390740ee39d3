// Package registry looks container images up in their registries with
// go-containerregistry and returns them as policy facts: digest, config
// created time, history and labels of every platform.
//
// Everything fetched for a digest is immutable and kept in a bounded
// cache; tag resolutions are kept briefly. Concurrent lookups of the same
// image are coalesced, requests to one registry are bounded, and nothing
// is ever dialled on a link-local or cloud-metadata address.
package registry

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/singleflight"

	"buildguard.dev/buildguard/policy"
)

// Defaults of the options.
const (
	DefaultTagTTL          = 30 * time.Second
	DefaultMaxImages       = 10000
	DefaultPerRegistry     = 8
	DefaultFetchTimeout    = 9 * time.Second
	defaultPullerLifetime  = 10 * time.Minute
	defaultMaxPullers      = 256
	maxIndexChildren       = 64
	attestationRefTypeAnno = "vnd.docker.reference.type"
)

// Observer is told about cache use and registry requests, for metrics.
type Observer interface {
	// CacheResult reports a lookup in cache "tag" or "digest".
	CacheResult(cache string, hit bool)
	// Request reports one HTTP request to a registry; status is 0 when no
	// response came back.
	Request(registry, method string, status int, elapsed time.Duration)
}

type nopObserver struct{}

func (nopObserver) CacheResult(string, bool)                   {}
func (nopObserver) Request(string, string, int, time.Duration) {}

// Option configures a Client.
type Option func(*Client)

// WithTagTTL sets how long a tag → digest resolution is reused. The
// default is 30s; zero disables the tag cache.
func WithTagTTL(d time.Duration) Option { return func(c *Client) { c.tagTTL = d } }

// WithMaxImages bounds the number of images (manifests with their
// configs) kept in memory. The default is 10000.
func WithMaxImages(n int) Option { return func(c *Client) { c.maxImages = n } }

// WithPerRegistry bounds concurrent requests to one registry host. The
// default is 8.
func WithPerRegistry(n int) Option { return func(c *Client) { c.perRegistry = n } }

// WithFetchTimeout bounds one coalesced lookup when the caller's context
// has no deadline. The default is 9s.
func WithFetchTimeout(d time.Duration) Option { return func(c *Client) { c.fetchTimeout = d } }

// WithTransport sets the base HTTP transport. The default is a transport
// with short dial, TLS and header timeouts that refuses link-local and
// cloud-metadata addresses. A transport given here is wrapped with the
// same per-registry bound and the plain-HTTP check, not with the dial
// check: tests use it to reach in-process registries.
func WithTransport(t http.RoundTripper) Option { return func(c *Client) { c.base = t } }

// WithObserver sets who is told about requests and cache results.
func WithObserver(o Observer) Option { return func(c *Client) { c.obs = o } }

// WithClock sets the clock for tag expiry. The default is time.Now.
func WithClock(now func() time.Time) Option { return func(c *Client) { c.now = now } }

// Client resolves image references. It is safe for concurrent use.
type Client struct {
	tagTTL       time.Duration
	maxImages    int
	perRegistry  int
	fetchTimeout time.Duration
	base         http.RoundTripper
	obs          Observer
	now          func() time.Time

	transport http.RoundTripper
	tags      *lru[string]        // canonical tag → digest
	images    *lru[*policy.Image] // repo@digest → image
	pullers   *lru[*pullerEntry]  // auth key → puller
	flight    singleflight.Group
	pullerMu  sync.Mutex
}

type pullerEntry struct {
	p       *remote.Puller
	created time.Time
}

// New returns a Client.
func New(opts ...Option) *Client {
	c := &Client{
		tagTTL:       DefaultTagTTL,
		maxImages:    DefaultMaxImages,
		perRegistry:  DefaultPerRegistry,
		fetchTimeout: DefaultFetchTimeout,
		obs:          nopObserver{},
		now:          time.Now,
	}
	for _, o := range opts {
		o(c)
	}
	if c.base == nil {
		c.base = newSafeTransport()
	}
	if c.maxImages < 1 {
		c.maxImages = 1
	}
	if c.perRegistry < 1 {
		c.perRegistry = 1
	}
	c.transport = &guardTransport{inner: c.base, sems: map[string]chan struct{}{}, per: c.perRegistry, obs: c.obs}
	c.tags = newLRU[string](c.maxImages)
	c.images = newLRU[*policy.Image](c.maxImages)
	c.pullers = newLRU[*pullerEntry](defaultMaxPullers)
	return c
}

// Auth says how to authenticate a lookup. Key identifies the keychain
// (say "ns/serviceaccount/secret1,secret2"): lookups with the same key
// share authenticated connections.
type Auth struct {
	Key      string
	Keychain authn.Keychain
}

// Anonymous is Auth for public registries.
var Anonymous = Auth{Key: "anonymous", Keychain: authn.NewMultiKeychain()}

// Request is one image lookup.
type Request struct {
	Ref  name.Reference
	Auth Auth
	// Insecure allows plain HTTP to the registry; otherwise only HTTPS is
	// used, even for loopback and private addresses.
	Insecure bool
}

// Resolve looks the image up. Errors are *policy.ResolveError.
func (c *Client) Resolve(ctx context.Context, r Request) (*policy.Image, error) {
	if policy.ForbiddenHost(r.Ref.Context().RegistryStr()) {
		return nil, &policy.ResolveError{Kind: policy.ErrUnavailable, Message: "registry address is link-local or cloud metadata; not contacted"}
	}
	if r.Auth.Keychain == nil {
		r.Auth = Anonymous
	}
	ctx = withInsecure(ctx, r.Insecure)
	dig, err := c.digestOf(ctx, r)
	if err != nil {
		return nil, err
	}
	return c.image(ctx, r, dig)
}

// CachedImages returns the number of images in the cache.
func (c *Client) CachedImages() int { return c.images.len() }

// digestOf returns the digest a reference names: the reference itself
// for a digest, a cached or HEAD-resolved one for a tag.
func (c *Client) digestOf(ctx context.Context, r Request) (name.Digest, error) {
	if d, ok := r.Ref.(name.Digest); ok {
		return d, nil
	}
	// What a tag names may differ by transport and credentials: a
	// resolution over plain HTTP or with other credentials is not reused.
	key := fmt.Sprintf("%s\x00%t\x00%s", r.Ref.Name(), r.Insecure, r.Auth.Key)
	if c.tagTTL > 0 {
		if d, ok := c.tags.get(key, c.now()); ok {
			c.obs.CacheResult("tag", true)
			return r.Ref.Context().Digest(d), nil
		}
		c.obs.CacheResult("tag", false)
	}
	v, err := c.shared(ctx, "tag\x00"+key, func(ctx context.Context) (any, error) {
		// A flight that ended after this caller missed the cache and
		// before it started this one has filled it.
		if d, ok := c.tags.get(key, c.now()); c.tagTTL > 0 && ok {
			return d, nil
		}
		p, err := c.puller(r.Auth)
		if err != nil {
			return nil, err
		}
		// HEAD does not count against Docker Hub's pull limits.
		desc, err := p.Head(ctx, r.Ref)
		if err != nil {
			if k := classify(err); k == policy.ErrNotFound || k == policy.ErrUnauthorized || ctx.Err() != nil {
				return nil, err
			}
			// Some registries answer HEAD without Docker-Content-Digest or
			// not at all; GET is the fallback.
			d, gerr := p.Get(ctx, r.Ref)
			if gerr != nil {
				return nil, gerr
			}
			desc = &d.Descriptor
		}
		// Cached before the flight ends: a lookup that starts between the
		// end of the flight and its callers' return finds it.
		if c.tagTTL > 0 {
			c.tags.add(key, desc.Digest.String(), c.now().Add(c.tagTTL))
		}
		return desc.Digest.String(), nil
	})
	if err != nil {
		return name.Digest{}, resolveError(err)
	}
	return r.Ref.Context().Digest(v.(string)), nil
}

// image returns the image at a digest, from the cache or the registry.
func (c *Client) image(ctx context.Context, r Request, d name.Digest) (*policy.Image, error) {
	key := d.Name()
	if img, ok := c.images.get(key, time.Time{}); ok {
		c.obs.CacheResult("digest", true)
		return img, nil
	}
	c.obs.CacheResult("digest", false)
	// Content at a digest is the same for everyone; the flight is not, as
	// it carries the first caller's credentials and transport.
	v, err := c.shared(ctx, fmt.Sprintf("digest\x00%s\x00%t\x00%s", key, insecureOf(ctx), r.Auth.Key), func(ctx context.Context) (any, error) {
		if img, ok := c.images.get(key, time.Time{}); ok { // as for tags
			return img, nil
		}
		img, err := c.fetch(ctx, r.Auth, d)
		if err == nil {
			c.images.add(key, img, time.Time{}) // before the flight ends, as for tags
		}
		return img, err
	})
	if err != nil {
		return nil, resolveError(err)
	}
	return v.(*policy.Image), nil
}

// shared runs fn once for all concurrent callers with the same key. fn
// runs detached from any one caller's cancellation, so a client that goes
// away does not fail the others, but bounded by the first caller's
// deadline (or fetchTimeout). Each caller stops waiting when its own
// context ends.
func (c *Client) shared(ctx context.Context, key string, fn func(context.Context) (any, error)) (any, error) {
	ch := c.flight.DoChan(key, func() (any, error) {
		fctx := context.WithoutCancel(ctx)
		var cancel context.CancelFunc
		if dl, ok := ctx.Deadline(); ok {
			fctx, cancel = context.WithDeadline(fctx, dl)
		} else {
			fctx, cancel = context.WithTimeout(fctx, c.fetchTimeout)
		}
		defer cancel()
		return fn(fctx)
	})
	select {
	case res := <-ch:
		return res.Val, res.Err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *Client) puller(a Auth) (*remote.Puller, error) {
	c.pullerMu.Lock()
	defer c.pullerMu.Unlock()
	now := c.now()
	if e, ok := c.pullers.get(a.Key, now); ok {
		return e.p, nil
	}
	p, err := remote.NewPuller(
		remote.WithTransport(c.transport),
		remote.WithAuthFromKeychain(a.Keychain),
		remote.WithUserAgent("buildguard"),
		// The review has a deadline of a few seconds: retry once, fast.
		remote.WithRetryBackoff(remote.Backoff{Duration: 50 * time.Millisecond, Factor: 2, Steps: 2}),
	)
	if err != nil {
		return nil, err
	}
	// A puller keeps one authenticated transport per repository; renewing
	// it bounds that memory and picks up rotated pull secrets.
	c.pullers.add(a.Key, &pullerEntry{p: p, created: now}, now.Add(defaultPullerLifetime))
	return p, nil
}

// fetch reads the manifest at d and, for an image, its config; for an
// index, every platform child.
func (c *Client) fetch(ctx context.Context, a Auth, d name.Digest) (*policy.Image, error) {
	p, err := c.puller(a)
	if err != nil {
		return nil, err
	}
	desc, err := p.Get(ctx, d)
	if err != nil {
		return nil, err
	}
	img := &policy.Image{Digest: desc.Digest.String()}
	switch {
	case desc.MediaType.IsIndex():
		img.Index = true
		im, err := v1.ParseIndexManifest(bytes.NewReader(desc.Manifest))
		if err != nil {
			return nil, invalid("index %s does not decode: %v", desc.Digest, err)
		}
		children := platformChildren(im)
		if len(children) == 0 {
			return nil, invalid("index %s has no image for any platform", desc.Digest)
		}
		if len(children) > maxIndexChildren {
			return nil, invalid("index %s has %d children, more than %d", desc.Digest, len(children), maxIndexChildren)
		}
		for _, m := range children {
			if m.MediaType.IsIndex() {
				// Fetching nested indexes would fan out without bound.
				return nil, invalid("index %s nests index %s", desc.Digest, m.Digest)
			}
		}
		img.Platforms = make([]policy.Platform, len(children))
		errs := make([]error, len(children))
		var wg sync.WaitGroup
		for i, m := range children {
			wg.Add(1)
			go func() {
				defer wg.Done()
				child, err := c.image(ctx, Request{Auth: a}, d.Context().Digest(m.Digest.String()))
				if err != nil {
					errs[i] = err
					return
				}
				if child.Index || len(child.Platforms) != 1 {
					errs[i] = invalid("index child %s is not an image", m.Digest)
					return
				}
				pl := child.Platforms[0]
				pl.Platform = m.Platform.String()
				img.Platforms[i] = pl
			}()
		}
		wg.Wait()
		if err := childrenError(errs); err != nil {
			return nil, err
		}
	case desc.MediaType.IsImage():
		m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
		if err != nil {
			return nil, invalid("manifest %s does not decode: %v", desc.Digest, err)
		}
		if m.Config.Digest == (v1.Hash{}) {
			return nil, invalid("manifest %s names no config", desc.Digest)
		}
		if m.Config.Size > maxConfigBytes {
			return nil, invalid("config of %s is %d bytes, more than %d", desc.Digest, m.Config.Size, maxConfigBytes)
		}
		im, err := desc.Image()
		if err != nil {
			return nil, err
		}
		// Fetched (and its digest and size checked) apart from decoding:
		// what fails to decode came whole from a registry that answered.
		raw, err := im.RawConfigFile()
		if err != nil {
			return nil, err
		}
		var vc jsonCounter
		if vc.scan(raw); vc.values() > maxJSONValues {
			return nil, tooManyValues(fmt.Sprintf("config %s of %s", m.Config.Digest, desc.Digest))
		}
		cf, err := v1.ParseConfigFile(bytes.NewReader(raw))
		if err != nil {
			return nil, invalid("config %s of %s does not decode: %v", m.Config.Digest, desc.Digest, err)
		}
		img.Platforms = []policy.Platform{platformOf(desc.Digest.String(), m.Config.Digest.String(), cf)}
	default:
		return nil, invalid("%s has media type %q, which is neither an image nor an index", d.Name(), desc.MediaType)
	}
	return img, nil
}

// childrenError is the error of an index whose children failed, or nil.
// One child the registry cannot serve makes the whole index unresolvable
// (a node pulling it may get that child); only when every failure is an
// outage is the index unavailable.
func childrenError(errs []error) error {
	var kind policy.ErrorKind
	var msgs []string
	for _, err := range errs {
		if err == nil {
			continue
		}
		k := classify(err)
		if kind == "" || kind == policy.ErrUnavailable {
			kind = k
		}
		msgs = append(msgs, redact(err.Error()))
	}
	if kind == "" {
		return nil
	}
	return &policy.ResolveError{Kind: kind, Message: strings.Join(msgs, "; ")}
}

// platformChildren drops what is not a runnable image: BuildKit
// attestation manifests and unknown/unknown platforms.
func platformChildren(im *v1.IndexManifest) []v1.Descriptor {
	var out []v1.Descriptor
	for _, m := range im.Manifests {
		if m.Annotations[attestationRefTypeAnno] == "attestation-manifest" {
			continue
		}
		if m.Platform != nil && m.Platform.OS == "unknown" && m.Platform.Architecture == "unknown" {
			continue
		}
		if m.Platform == nil {
			m.Platform = &v1.Platform{}
		}
		out = append(out, m)
	}
	return out
}

func platformOf(manifestDigest, configDigest string, cf *v1.ConfigFile) policy.Platform {
	pl := policy.Platform{Digest: manifestDigest, ConfigDigest: configDigest, Created: cf.Created.Time}
	if len(cf.Config.Labels) > 0 {
		pl.Labels = cf.Config.Labels
	}
	pl.History = make([]policy.History, 0, len(cf.History))
	for _, h := range cf.History {
		pl.History = append(pl.History, policy.History{Created: h.Created.Time, CreatedBy: h.CreatedBy, EmptyLayer: h.EmptyLayer})
	}
	return pl
}

func invalid(format string, args ...any) error {
	return &policy.ResolveError{Kind: policy.ErrInvalidImage, Message: fmt.Sprintf(format, args...)}
}
