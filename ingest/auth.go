// Package ingest receives node reports over HTTP — buildguard's own JSON,
// Falco alerts, Tetragon exports and Docker events — authenticates the
// reporter with a Kubernetes TokenReview, and stores what it can parse.
package ingest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Identity is an authenticated reporter.
type Identity struct {
	// User is the Kubernetes user name, e.g.
	// "system:serviceaccount:buildguard-node-agent:buildguard-node-agent".
	User string
	// Node is the node the token is bound to (its pod's node), when the
	// token says; reports are then taken to come from that node whatever
	// their body claims.
	Node string
}

// AuthError is a request whose credentials were refused.
type AuthError struct {
	Code int // 401 or 403
	Msg  string
}

func (e *AuthError) Error() string { return e.Msg }

// Authenticator checks a bearer token.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (Identity, error)
}

// nodeNameExtra is where a bound service-account token carries the name
// of the node its pod runs on.
const nodeNameExtra = "authentication.kubernetes.io/node-name"

// DefaultTokenTTL is how long a TokenReview answer is reused.
const DefaultTokenTTL = 30 * time.Second

// TokenReviewer authenticates service-account tokens with the API
// server's TokenReview, bound to Audiences, and admits only the users in
// Allowed. Answers, positive and negative, are cached for TTL by the
// token's SHA-256, so a node's batches do not each cost a review.
type TokenReviewer struct {
	Client kubernetes.Interface
	// Audiences the token must be bound to, e.g. ["buildguard"].
	Audiences []string
	// Allowed are the user names that may report.
	Allowed []string
	// TTL of cached answers. The default is DefaultTokenTTL.
	TTL time.Duration
	// Now is the clock. The default is time.Now.
	Now func() time.Time

	mu    sync.Mutex
	cache map[[32]byte]cachedReview
}

type cachedReview struct {
	id      Identity
	err     error
	expires time.Time
}

// maxCachedTokens bounds the cache; past it, the cache starts over.
const maxCachedTokens = 4096

// Authenticate implements Authenticator.
func (r *TokenReviewer) Authenticate(ctx context.Context, token string) (Identity, error) {
	if token == "" {
		return Identity{}, &AuthError{Code: 401, Msg: "missing bearer token: send the pod's projected service-account token"}
	}
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	key := sha256.Sum256([]byte(token))
	r.mu.Lock()
	if c, ok := r.cache[key]; ok && now().Before(c.expires) {
		r.mu.Unlock()
		return c.id, c.err
	}
	r.mu.Unlock()

	id, err := r.review(ctx, token)
	var ae *AuthError
	if err != nil && !errors.As(err, &ae) {
		return Identity{}, err // the API server's trouble: not cached
	}
	ttl := r.TTL
	if ttl <= 0 {
		ttl = DefaultTokenTTL
	}
	r.mu.Lock()
	if r.cache == nil || len(r.cache) >= maxCachedTokens {
		r.cache = map[[32]byte]cachedReview{}
	}
	r.cache[key] = cachedReview{id: id, err: err, expires: now().Add(ttl)}
	r.mu.Unlock()
	return id, err
}

func (r *TokenReviewer) review(ctx context.Context, token string) (Identity, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tr, err := r.Client.AuthenticationV1().TokenReviews().Create(ctx, &authv1.TokenReview{
		Spec: authv1.TokenReviewSpec{Token: token, Audiences: r.Audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return Identity{}, fmt.Errorf("token review: %w", err)
	}
	if !tr.Status.Authenticated {
		msg := "token not authenticated"
		if tr.Status.Error != "" {
			msg += ": " + tr.Status.Error
		}
		return Identity{}, &AuthError{Code: 401, Msg: msg}
	}
	if len(r.Audiences) > 0 && !intersects(tr.Status.Audiences, r.Audiences) {
		return Identity{}, &AuthError{Code: 401, Msg: "token not bound to the audience " + strings.Join(r.Audiences, ", ")}
	}
	id := Identity{User: tr.Status.User.Username}
	if n := tr.Status.User.Extra[nodeNameExtra]; len(n) > 0 {
		id.Node = n[0]
	}
	for _, a := range r.Allowed {
		if a == id.User {
			return id, nil
		}
	}
	return Identity{}, &AuthError{Code: 403, Msg: fmt.Sprintf("%s may not report node evidence", id.User)}
}

func intersects(a, b []string) bool {
	for _, x := range a {
		for _, y := range b {
			if x == y {
				return true
			}
		}
	}
	return false
}
