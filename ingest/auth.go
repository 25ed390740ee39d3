// Package ingest receives node reports over HTTP — buildguard's own JSON,
// Falco alerts, Tetragon exports and Docker events — authenticates the
// reporter with a Kubernetes TokenReview, and stores what it can parse.
package ingest

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
	utilcache "k8s.io/apimachinery/pkg/util/cache"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/kubeauth"
)

// Identity is an authenticated reporter.
type Identity struct {
	// User is the Kubernetes user name, e.g.
	// "system:serviceaccount:buildguard-node-agent:buildguard-node-agent".
	User string
	// Node is the node the token is bound to (its pod's node), when the
	// token says. A reporter that is not a forwarder reports for this
	// node only, whatever its reports' bodies claim.
	Node string
	// Forwarder is true for the users that may report for any node, such
	// as a central falcosidekick: the nodes their reports name are taken
	// as they are.
	Forwarder bool
}

// Authenticator checks a bearer token.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (Identity, error)
}

// nodeNameExtra is where a bound service-account token carries the name
// of the node its pod runs on (Kubernetes 1.30 and later).
const nodeNameExtra = "authentication.kubernetes.io/node-name"

// Defaults of TokenReviewer's fields.
const (
	// DefaultTokenTTL is how long an accepted token's review is reused.
	DefaultTokenTTL = 30 * time.Second
	// DefaultFailureTTL is how long a refused token's review is reused.
	DefaultFailureTTL = 10 * time.Second
	// DefaultCacheSize is how many tokens' reviews are kept.
	DefaultCacheSize = 8192
	// DefaultReviewTimeout bounds one TokenReview.
	DefaultReviewTimeout = 5 * time.Second
)

// The rate at which the client of NewReviewClient may send TokenReviews:
// the figures of the API server's own delegated authenticator
// (k8s.io/apiserver, DelegatingAuthenticationOptions). client-go's default
// of 5 per second refused most reports of a fleet starting up: each node
// has its own token, so N nodes need N reviews once, then N per TTL (1,000
// nodes and a 30 s TTL: about 40 a second, reviewed ahead of expiry).
const (
	ReviewQPS   = 200
	ReviewBurst = 400
)

// NewReviewClient returns a clientset for a TokenReviewer: cfg's, with
// its own rate limit of ReviewQPS and ReviewBurst, so that reviews
// neither wait behind nor hold up the server's other API calls.
func NewReviewClient(cfg *rest.Config) (kubernetes.Interface, error) {
	c := rest.CopyConfig(cfg)
	c.QPS, c.Burst, c.RateLimiter = ReviewQPS, ReviewBurst, nil
	return kubernetes.NewForConfig(c)
}

// TokenReviewer authenticates service-account tokens with the API
// server's TokenReview, bound to Audiences, and admits the users in
// Allowed (for the node their token is bound to) and in Forwarders (for
// any node).
//
// Answers are cached by an HMAC-SHA256 of the token under a key drawn
// when the reviewer is made (as the API server's token cache does), in a
// least-recently-used cache of CacheSize tokens: accepted tokens for TTL,
// refused ones for FailureTTL; the API server's errors are not cached.
// Concurrent requests with a token not in the cache share one review. A
// token used in the last fifth of its TTL is reviewed again in the
// background, so that a node reporting steadily does not wait for a
// review once its answer expires; a token that fails that review is
// refused from then on.
type TokenReviewer struct {
	Client kubernetes.Interface
	// Audiences the token must be bound to, e.g. ["buildguard"].
	Audiences []string
	// Allowed are the users that may report for the node their token is
	// bound to (a pod's projected service-account token). A token of
	// theirs without a node is refused.
	Allowed []string
	// Forwarders are the users that may report for any node, with any
	// token: the nodes named in the report are believed. They need not be
	// in Allowed.
	Forwarders []string
	// TTL of accepted tokens' answers. The default is DefaultTokenTTL.
	TTL time.Duration
	// FailureTTL of refused tokens' answers. The default is
	// DefaultFailureTTL.
	FailureTTL time.Duration
	// CacheSize is how many tokens' answers are kept. The default is
	// DefaultCacheSize.
	CacheSize int
	// Timeout bounds one review. The default is DefaultReviewTimeout.
	Timeout time.Duration
	// Clock tells the time answers are cached at and expire. The default,
	// nil, is the real clock.
	Clock clock.Clock

	once   sync.Once
	key    []byte
	cache  *utilcache.LRUExpireCache
	group  singleflight.Group
	bg     sync.WaitGroup
	closed atomic.Bool
}

// cachedReview is a review's answer. Its fields do not change once
// cached, but for refreshing.
type cachedReview struct {
	id         Identity
	err        error
	reviewed   time.Time
	refreshing atomic.Bool
}

func (r *TokenReviewer) init() {
	r.once.Do(func() {
		r.key = make([]byte, 32)
		rand.Read(r.key) // never fails (crypto/rand panics rather)
		size := r.CacheSize
		if size <= 0 {
			size = DefaultCacheSize
		}
		r.cache = utilcache.NewLRUExpireCacheWithClock(size, clock.OrReal(r.Clock))
	})
}

func (r *TokenReviewer) now() time.Time {
	return clock.OrReal(r.Clock).Now()
}

func (r *TokenReviewer) ttl(err error) time.Duration {
	if err != nil {
		return cmpOr(r.FailureTTL, DefaultFailureTTL)
	}
	return cmpOr(r.TTL, DefaultTokenTTL)
}

func cmpOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func (r *TokenReviewer) cacheKey(token string) string {
	h := hmac.New(sha256.New, r.key)
	h.Write([]byte(token))
	return string(h.Sum(nil))
}

// Authenticate implements Authenticator.
func (r *TokenReviewer) Authenticate(ctx context.Context, token string) (Identity, error) {
	if token == "" {
		return Identity{}, &kubeauth.Error{Code: 401, Reason: "missing bearer token: send the pod's projected service-account token"}
	}
	if !isJWT(token) {
		// Not worth a review: every service-account token is a JWT.
		return Identity{}, &kubeauth.Error{Code: 401, Reason: "token not authenticated: not a service-account token (a JWT)"}
	}
	r.init()
	key := r.cacheKey(token)
	if v, ok := r.cache.Get(key); ok {
		c := v.(*cachedReview)
		if c.err == nil {
			ttl := r.ttl(nil)
			if r.now().Sub(c.reviewed) >= ttl-ttl/5 && c.refreshing.CompareAndSwap(false, true) {
				r.refresh(key, token)
			}
		}
		return c.id, c.err
	}
	ch := r.group.DoChan(key, func() (any, error) {
		// Not the first caller's context: its cancellation must not fail
		// the others waiting for the same review.
		return r.reviewAndCache(context.WithoutCancel(ctx), key, token)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return Identity{}, res.Err
		}
		c := res.Val.(*cachedReview)
		return c.id, c.err
	case <-ctx.Done():
		return Identity{}, fmt.Errorf("token review: %w", ctx.Err())
	}
}

// refresh reviews token again in the background and replaces its entry.
func (r *TokenReviewer) refresh(key, token string) {
	if r.closed.Load() {
		return
	}
	r.bg.Add(1)
	go func() {
		defer r.bg.Done()
		r.group.Do(key, func() (any, error) {
			c, err := r.reviewAndCache(context.Background(), key, token)
			if err != nil {
				// The API server's trouble: the cached answer stands until
				// it expires, and the next use tries again.
				if v, ok := r.cache.Get(key); ok {
					v.(*cachedReview).refreshing.Store(false)
				}
			}
			return c, err
		})
	}()
}

// Close waits for background reviews to end. The reviewer still answers
// after it, without reviewing ahead.
func (r *TokenReviewer) Close() {
	r.closed.Store(true)
	r.bg.Wait()
}

// reviewAndCache reviews token and caches the answer, unless the API
// server failed to give one.
func (r *TokenReviewer) reviewAndCache(ctx context.Context, key, token string) (*cachedReview, error) {
	ctx, cancel := context.WithTimeout(ctx, cmpOr(r.Timeout, DefaultReviewTimeout))
	defer cancel()
	id, err := r.review(ctx, token)
	var ae *kubeauth.Error
	if err != nil && !errors.As(err, &ae) {
		return nil, err
	}
	c := &cachedReview{id: id, err: err, reviewed: r.now()}
	r.cache.Add(key, c, r.ttl(err))
	return c, nil
}

func (r *TokenReviewer) review(ctx context.Context, token string) (Identity, error) {
	rv, err := kubeauth.ReviewToken(ctx, r.Client, token, r.Audiences)
	var ae *kubeauth.Error
	switch {
	case errors.As(err, &ae):
		msg := "token not authenticated"
		if ae.Reason != "" {
			msg += ": " + ae.Reason
		}
		return Identity{}, &kubeauth.Error{Code: 401, Reason: msg}
	case err != nil:
		return Identity{}, fmt.Errorf("token review: %w", err)
	}
	if len(r.Audiences) > 0 && !intersects(rv.Audiences, r.Audiences) {
		return Identity{}, &kubeauth.Error{Code: 401, Reason: "token not bound to the audience " + strings.Join(r.Audiences, ", ")}
	}
	id := Identity{User: rv.User.Name}
	if n := rv.User.Extra[nodeNameExtra]; len(n) > 0 {
		id.Node = n[0]
	}
	switch {
	case slices.Contains(r.Forwarders, id.User):
		id.Forwarder = true
		return id, nil
	case !slices.Contains(r.Allowed, id.User):
		return Identity{}, &kubeauth.Error{Code: 403, Reason: fmt.Sprintf("%s may not report node evidence", id.User)}
	case id.Node == "":
		return Identity{}, &kubeauth.Error{Code: 403, Reason: fmt.Sprintf("%s may report only for the node its token is bound to, and this token is bound to none: "+
			"use the pod's projected service-account token, or list %[1]s as a forwarder (--report-forwarders)", id.User)}
	}
	return id, nil
}

// isJWT reports whether token has the form of a JWS compact
// serialization: three parts of base64url characters, the first two not
// empty.
func isJWT(token string) bool {
	parts := 0
	empty := true
	for i := 0; i < len(token); i++ {
		switch c := token[i]; {
		case c == '.':
			if empty && parts < 2 {
				return false
			}
			parts++
			empty = true
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
			empty = false
		default:
			return false
		}
	}
	return parts == 2
}

func intersects(a, b []string) bool {
	for _, x := range a {
		if slices.Contains(b, x) {
			return true
		}
	}
	return false
}
