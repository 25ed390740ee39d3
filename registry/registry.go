// Package registry looks container images up in their registries with
// go-containerregistry and returns them as policy facts: digest, config
// created time, history and run config of every platform.
//
// Everything fetched for a digest is immutable and kept in a bounded
// cache; tag resolutions are kept briefly. Concurrent lookups of the same
// image are coalesced, requests to one registry are bounded, and nothing
// is ever dialled on a link-local or cloud-metadata address. What a
// registry sends is capped before it is read (4 MiB manifests, 8 MiB
// configs), and the bytes all lookups hold at once are bounded. Only what
// could not be sent or received is "unavailable": whatever a registry
// that answered served, however malformed, is an image that cannot be
// resolved.
package registry

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/bits"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/singleflight"

	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/policy"
)

// Defaults of the options.
const (
	DefaultTagTTL          = 30 * time.Second
	DefaultMaxImages       = 10000
	DefaultPerRegistry     = 8
	DefaultFetchTimeout    = 9 * time.Second
	DefaultMaxInFlight     = 16 << 20
	DefaultMaxCacheBytes   = 64 << 20
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

// WithMaxInFlightBytes bounds the bytes of manifests and configs that
// lookups hold at once, from their response header until they are
// decoded; decoding them allocates a few times that. Lookups whose bodies do
// not fit wait, within their deadline. The default is 32 MiB; less than
// 8 MiB, the largest config, is taken as 8 MiB.
func WithMaxInFlightBytes(n int64) Option { return func(c *Client) { c.inFlight = n } }

// WithMaxCacheBytes bounds the memory of the images kept in the cache
// (their history, run config and digests), besides WithMaxImages. The default
// is 64 MiB.
func WithMaxCacheBytes(n int64) Option { return func(c *Client) { c.cacheBytes = n } }

// WithResolver sets the resolver of the default transport, whose dialer
// refuses the link-local and metadata addresses a name resolves to. The
// default is the system's. It has no effect with WithTransport.
func WithResolver(r *net.Resolver) Option { return func(c *Client) { c.resolver = r } }

// WithObserver sets who is told about requests and cache results.
func WithObserver(o Observer) Option { return func(c *Client) { c.obs = o } }

// WithClock sets the clock of tag expiry. The default is the real clock.
func WithClock(clk clock.Clock) Option { return func(c *Client) { c.clock = clock.OrReal(clk) } }

// Client resolves image references. It is safe for concurrent use.
type Client struct {
	tagTTL       time.Duration
	maxImages    int
	perRegistry  int
	fetchTimeout time.Duration
	inFlight     int64
	cacheBytes   int64
	base         http.RoundTripper
	resolver     *net.Resolver
	obs          Observer
	clock        clock.Clock

	transport http.RoundTripper
	budget    *budget
	tags      *lru[string]        // canonical tag → digest
	images    *lru[*policy.Image] // repo@digest → image
	pullers   *lru[*pullerEntry]  // auth key → puller
	flight    singleflight.Group
	pullerMu  sync.Mutex
	intern    interner
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
		inFlight:     DefaultMaxInFlight,
		cacheBytes:   DefaultMaxCacheBytes,
		obs:          nopObserver{},
		clock:        clock.Real{},
	}
	for _, o := range opts {
		o(c)
	}
	if c.base == nil {
		c.base = newSafeTransport(c.resolver)
	}
	if c.maxImages < 1 {
		c.maxImages = 1
	}
	if c.perRegistry < 1 {
		c.perRegistry = 1
	}
	c.budget = newBudget(max(c.inFlight, maxConfigBytes))
	c.transport = &guardTransport{inner: c.base, sems: map[string]chan struct{}{}, per: c.perRegistry, obs: c.obs, budget: c.budget}
	c.tags = newLRU[string](c.maxImages)
	c.images = newWeighedLRU(c.maxImages, c.cacheBytes, cachedImageBytes)
	c.pullers = newLRU[*pullerEntry](defaultMaxPullers)
	return c
}

func (c *Client) now() time.Time { return c.clock.Now() }

// forbiddenRegistry is the error of a registry written as a link-local or
// metadata address, which is never contacted.
func forbiddenRegistry() error {
	return &policy.ResolveError{Kind: policy.ErrForbiddenAddress, Message: "registry address is link-local or cloud metadata; not contacted"}
}

// Auth says how to authenticate a lookup. Key identifies the keychain
// (say "ns/serviceaccount/secret1,secret2"): lookups with the same key
// share authenticated connections.
type Auth struct {
	Key      string
	Keychain authn.Keychain
}

// Anonymous is Auth for public registries.
func Anonymous() Auth { return Auth{Key: "anonymous", Keychain: anonymousKeychain} }

// anonymousKeychain is empty, so it resolves every registry to
// anonymous access; one for all lookups, which do not change it.
var anonymousKeychain = authn.NewMultiKeychain()

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
		return nil, forbiddenRegistry()
	}
	if r.Auth.Keychain == nil {
		r.Auth = Anonymous()
	}
	ctx = withInsecure(ctx, r.Insecure)
	dig, err := c.digestOf(ctx, r)
	if err != nil {
		return nil, err
	}
	return c.image(ctx, r, dig)
}

// Cached returns the image r names when the caches hold it (for a tag,
// a resolution younger than the tag TTL), without contacting a registry
// or waiting for anyone; false sends the caller to Resolve. Hits are
// counted as Resolve counts them; misses are left for Resolve to count.
func (c *Client) Cached(r Request) (*policy.Image, bool) {
	if policy.ForbiddenHost(r.Ref.Context().RegistryStr()) {
		return nil, false
	}
	if r.Auth.Keychain == nil {
		r.Auth = Anonymous()
	}
	// The keys are written to a buffer on the stack, not made strings:
	// this runs for every image of every review.
	var buf [256]byte
	var key []byte
	tag := false
	switch ref := r.Ref.(type) {
	case name.Digest:
		key = appendDigestKey(buf[:0], ref.Context(), ref.DigestStr())
	default:
		if c.tagTTL <= 0 {
			return nil, false
		}
		d, ok := c.tags.getBytes(appendTagKey(buf[:0], r), c.now())
		if !ok {
			return nil, false
		}
		key, tag = appendDigestKey(buf[:0], r.Ref.Context(), d), true
	}
	img, ok := c.images.getBytes(key, time.Time{})
	if !ok {
		return nil, false
	}
	if tag {
		c.obs.CacheResult("tag", true)
	}
	c.obs.CacheResult("digest", true)
	return img, true
}

// tagKey is the tag cache's key of r: what a tag names may differ by
// transport and credentials, so a resolution over plain HTTP or with
// other credentials is not reused.
func tagKey(r Request) string { return string(appendTagKey(nil, r)) }

// appendTagKey appends tagKey(r) to b.
func appendTagKey(b []byte, r Request) []byte {
	if t, ok := r.Ref.(name.Tag); ok {
		b = appendRepoName(b, t.Context())
		b = append(b, ':')
		b = append(b, t.TagStr()...)
	} else {
		b = append(b, r.Ref.Name()...)
	}
	insecure := "false"
	if r.Insecure {
		insecure = "true"
	}
	b = append(b, 0)
	b = append(b, insecure...)
	b = append(b, 0)
	return append(b, r.Auth.Key...)
}

// appendDigestKey appends the image cache's key of the image at digest in
// repo: repo.Digest(digest).Name().
func appendDigestKey(b []byte, repo name.Repository, digest string) []byte {
	b = appendRepoName(b, repo)
	b = append(b, '@')
	return append(b, digest...)
}

// appendRepoName appends repo.Name() to b.
func appendRepoName(b []byte, repo name.Repository) []byte {
	if reg := repo.RegistryStr(); reg != "" {
		b = append(b, reg...)
		b = append(b, '/')
	}
	return append(b, repo.RepositoryStr()...)
}

// CachedImages returns the number of images in the cache.
func (c *Client) CachedImages() int { return c.images.len() }

// CachedBytes returns the weight of the images in the cache, which
// WithMaxCacheBytes bounds: at least the memory they take.
func (c *Client) CachedBytes() int64 { return c.images.bytes() }

// digestOf returns the digest a reference names: the reference itself
// for a digest, a cached or HEAD-resolved one for a tag.
func (c *Client) digestOf(ctx context.Context, r Request) (name.Digest, error) {
	if d, ok := r.Ref.(name.Digest); ok {
		return d, nil
	}
	// What a tag names may differ by transport and credentials: a
	// resolution over plain HTTP or with other credentials is not reused.
	key := tagKey(r)
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
		// The GET below reads a manifest only for its digest.
		l := c.budget.lease(priorityOf(ctx))
		defer l.release()
		ctx = withLease(ctx, l)
		// HEAD does not count against Docker Hub's pull limits.
		desc, err := p.Head(ctx, r.Ref)
		if err != nil {
			if k := classify(err); k == policy.ErrNotFound || k == policy.ErrUnauthorized || k == policy.ErrForbiddenAddress || ctx.Err() != nil {
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
			keyDigest(key, img)
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
// index, every platform child. The manifest and the config are read in
// steps that each hold their bytes of the budget only until they are
// decoded: a config is never waited for while a manifest is held.
func (c *Client) fetch(ctx context.Context, a Auth, d name.Digest) (*policy.Image, error) {
	p, err := c.puller(a)
	if err != nil {
		return nil, err
	}
	m, err := c.readManifest(ctx, p, d)
	if err != nil {
		return nil, err
	}
	if !m.index {
		if m.platform == nil {
			cf, err := c.readConfig(ctx, p, d, m.config)
			if err != nil {
				return nil, err
			}
			pl := c.platformOf(m.digest.String(), m.config.Digest.String(), cf)
			m.platform = &pl
		}
		// The image's digest is its platform's: one string for both.
		return &policy.Image{Digest: m.platform.Digest, Platforms: []policy.Platform{*m.platform}}, nil
	}
	img := &policy.Image{Digest: m.digest.String(), Index: true}
	img.Platforms = make([]policy.Platform, len(m.children))
	errs := make([]error, len(m.children))
	var wg sync.WaitGroup
	for i, ch := range m.children {
		wg.Add(1)
		go func() {
			defer wg.Done()
			child, err := c.image(withUnderWay(ctx), Request{Auth: a}, d.Context().Digest(ch.Digest.String()))
			if err != nil {
				errs[i] = err
				return
			}
			if child.Index || len(child.Platforms) != 1 {
				errs[i] = invalid("index child %s is not an image", ch.Digest)
				return
			}
			pl := child.Platforms[0]
			pl.Platform = c.intern.string(ch.Platform.String())
			img.Platforms[i] = pl
		}()
	}
	wg.Wait()
	if err := childrenError(errs); err != nil {
		return nil, err
	}
	return img, nil
}

// manifestFacts is what a lookup keeps of a manifest once decoded.
type manifestFacts struct {
	digest v1.Hash
	index  bool
	// children are an index's platform images.
	children []v1.Descriptor
	// config is an image's config; platform is the image, already
	// decoded when the manifest embeds its config.
	config   v1.Descriptor
	platform *policy.Platform
}

// readManifest reads and decodes the manifest at d, holding its bytes of
// the budget until it returns.
func (c *Client) readManifest(ctx context.Context, p *remote.Puller, d name.Digest) (manifestFacts, error) {
	l := c.budget.lease(priorityOf(ctx))
	defer l.release()
	desc, err := p.Get(withLease(ctx, l), d)
	if err != nil {
		return manifestFacts{}, err
	}
	f := manifestFacts{digest: desc.Digest}
	switch {
	case desc.MediaType.IsIndex():
		var im v1.IndexManifest
		if err := json.Unmarshal(desc.Manifest, &im); err != nil {
			return f, invalid("index %s does not decode: %v", desc.Digest, err)
		}
		f.index, f.children = true, platformChildren(&im)
		if len(f.children) == 0 {
			return f, invalid("index %s has no image for any platform", desc.Digest)
		}
		if len(f.children) > maxIndexChildren {
			return f, &policy.ResolveError{Kind: policy.ErrTooLarge, Message: fmt.Sprintf("index %s has %d children, more than the limit of %d", desc.Digest, len(f.children), maxIndexChildren)}
		}
		for i, m := range f.children {
			if m.MediaType.IsIndex() {
				// Fetching nested indexes would fan out without bound.
				return f, invalid("index %s nests index %s", desc.Digest, m.Digest)
			}
			// Only what finding the child takes outlives the step.
			f.children[i] = v1.Descriptor{MediaType: m.MediaType, Digest: m.Digest, Platform: m.Platform}
		}
	case desc.MediaType.IsImage():
		var m v1.Manifest
		if err := json.Unmarshal(desc.Manifest, &m); err != nil {
			return f, invalid("manifest %s does not decode: %v", desc.Digest, err)
		}
		if m.Config.Digest == (v1.Hash{}) {
			return f, invalid("manifest %s names no config", desc.Digest)
		}
		if m.Config.Size > maxConfigBytes {
			return f, &policy.ResolveError{Kind: policy.ErrTooLarge, Message: fmt.Sprintf("config of %s is %d bytes, more than the limit of %d", desc.Digest, m.Config.Size, maxConfigBytes)}
		}
		if m.Config.Size < 0 {
			return f, invalid("config of %s has a negative size", desc.Digest)
		}
		f.config = v1.Descriptor{MediaType: m.Config.MediaType, Size: m.Config.Size, Digest: m.Config.Digest}
		if m.Config.Data != nil {
			// Embedded in the manifest, counted with it.
			if !matches(m.Config.Data, m.Config) {
				return f, invalid("config embedded in %s does not match its digest %s and size %d", desc.Digest, m.Config.Digest, m.Config.Size)
			}
			cf, err := decodeConfig(m.Config.Data, m.Config.Digest.String(), desc.Digest.String())
			if err != nil {
				return f, err
			}
			pl := c.platformOf(desc.Digest.String(), m.Config.Digest.String(), cf)
			f.platform = &pl
		}
	default:
		return f, invalid("%s has media type %q, which is neither an image nor an index", d.Name(), desc.MediaType)
	}
	return f, nil
}

// readConfig reads and decodes the config cfg of the image at d, holding
// its bytes of the budget until it returns.
func (c *Client) readConfig(ctx context.Context, p *remote.Puller, d name.Digest, cfg v1.Descriptor) (*v1.ConfigFile, error) {
	l := c.budget.lease(underWay)
	defer l.release()
	layer, err := p.Layer(withLease(ctx, l), d.Context().Digest(cfg.Digest.String()))
	if err != nil {
		return nil, err
	}
	rc, err := layer.Compressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	// One byte more than the manifest says tells a longer blob apart. The
	// digest is checked as the blob's end is read.
	raw := make([]byte, cfg.Size+1)
	n, err := io.ReadFull(rc, raw)
	switch {
	case err == nil:
		return nil, invalid("config %s of %s is longer than the %d bytes its manifest says", cfg.Digest, d.DigestStr(), cfg.Size)
	case err == io.ErrUnexpectedEOF && int64(n) == cfg.Size, err == io.EOF && cfg.Size == 0:
	case err == io.ErrUnexpectedEOF || err == io.EOF:
		return nil, invalid("config %s of %s is %d bytes, not the %d its manifest says", cfg.Digest, d.DigestStr(), n, cfg.Size)
	default:
		return nil, err
	}
	return decodeConfig(raw[:n], cfg.Digest.String(), d.DigestStr())
}

// decodeConfig decodes a config read whole: whatever fails here came from
// a registry that answered, so it is an invalid image.
func decodeConfig(raw []byte, cfgDigest, of string) (*v1.ConfigFile, error) {
	var vc jsonCounter
	if vc.scan(raw); vc.values() > maxJSONValues {
		return nil, tooManyValues(fmt.Sprintf("config %s of %s", cfgDigest, of))
	}
	var cf v1.ConfigFile
	if err := json.Unmarshal(raw, &cf); err != nil {
		return nil, invalid("config %s of %s does not decode: %v", cfgDigest, of, err)
	}
	return &cf, nil
}

// matches reports whether b has the digest and size d says.
func matches(b []byte, d v1.Descriptor) bool {
	h, err := v1.Hasher(d.Digest.Algorithm)
	if err != nil || int64(len(b)) != d.Size {
		return false
	}
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil)) == d.Digest.Hex
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

// platformOf is what the cache keeps of an image: what policy reads of
// its config, nothing else of the decoded config, with the strings other
// images have too interned. Times are kept in UTC, the same instants: one
// written with another offset would hold a time.Location of its own.
// Slices are kept without spare capacity.
func (c *Client) platformOf(manifestDigest, configDigest string, cf *v1.ConfigFile) policy.Platform {
	pl := policy.Platform{Digest: manifestDigest, ConfigDigest: configDigest, Created: cf.Created.Time.UTC()}
	pl.Config = policy.RunConfig{Env: clip(cf.Config.Env), Entrypoint: clip(cf.Config.Entrypoint), Cmd: clip(cf.Config.Cmd), WorkingDir: cf.Config.WorkingDir}
	pl.History = make([]policy.History, 0, len(cf.History))
	for _, h := range cf.History {
		pl.History = append(pl.History, policy.History{Created: h.Created.Time.UTC(), CreatedBy: h.CreatedBy, EmptyLayer: h.EmptyLayer})
	}
	c.intern.platform(&pl)
	return pl
}

// clip returns s without spare capacity: decoding leaves up to half.
func clip(s []string) []string {
	if cap(s) == len(s) {
		return s
	}
	return append(make([]string, 0, len(s)), s...)
}

// keyDigest makes img's digest, and its platform's for an image, the end
// of its cache key (repo@digest), which the cache holds anyway: one
// allocation less per image. img must not be shared yet.
func keyDigest(key string, img *policy.Image) {
	i := len(key) - len(img.Digest)
	if i < 1 || key[i-1] != '@' || key[i:] != img.Digest {
		return
	}
	if !img.Index {
		img.Platforms[0].Digest = key[i:]
	}
	img.Digest = key[i:]
}

// ImageBytes is at least the memory img takes: its digests, history and
// run config and the structs that hold them, each allocation counted as
// allocBytes rounds it up. Strings and history an image shares with
// others (an index with its platforms' images) are counted in each. The
// cache and the images of one workload are bounded by it.
func ImageBytes(img *policy.Image) int64 {
	n := allocBytes(int(unsafe.Sizeof(*img))) + allocBytes(len(img.Digest)) +
		allocBytes(cap(img.Platforms)*int(unsafe.Sizeof(policy.Platform{})))
	for _, pl := range img.Platforms {
		n += allocBytes(len(pl.Platform)) + allocBytes(len(pl.ConfigDigest))
		if unsafe.StringData(pl.Digest) != unsafe.StringData(img.Digest) {
			n += allocBytes(len(pl.Digest))
		}
		n += allocBytes(cap(pl.History) * int(unsafe.Sizeof(policy.History{})))
		for _, h := range pl.History {
			n += allocBytes(len(h.CreatedBy))
		}
		n += stringsBytes(pl.Config.Env) + stringsBytes(pl.Config.Entrypoint) + stringsBytes(pl.Config.Cmd) + allocBytes(len(pl.Config.WorkingDir))
	}
	return n
}

// cachedImageBytes is what the cache weighs an image by: ImageBytes and
// the cache's own entry for it.
func cachedImageBytes(key string, img *policy.Image) int64 {
	return ImageBytes(img) + entryBytes[*policy.Image](key)
}

// stringsBytes is at least the memory of s and its strings.
func stringsBytes(s []string) int64 {
	n := allocBytes(cap(s) * int(unsafe.Sizeof("")))
	for _, v := range s {
		n += allocBytes(len(v))
	}
	return n
}

// allocBytes is at least the heap an allocation of n bytes takes. Go
// rounds it up to its size class: up to 256 bytes a multiple of 16 at
// most; up to 32 KiB at most a fifth and 32 bytes more, and at most the
// next quarter of the power of two at or above n (1000 bytes take 1024,
// 24000 take 24576); beyond, to 8 KiB pages.
func allocBytes(n int) int64 {
	switch {
	case n <= 0:
		return 0
	case n <= 256:
		return int64((n + 15) &^ 15)
	case n <= 32<<10:
		quarter := 1 << (bits.Len(uint(n-1)) - 2)
		return int64(min((n+quarter-1)&^(quarter-1), n+n/5+32))
	default:
		return int64((n + 8<<10 - 1) &^ (8<<10 - 1))
	}
}

func invalid(format string, args ...any) error {
	return &policy.ResolveError{Kind: policy.ErrInvalidImage, Message: fmt.Sprintf(format, args...)}
}
