// Package review is buildguard's web review UI: an overview of the last
// two weeks (decisions per day and verdict, rules, what was denied most,
// audit scans), a list of decisions with filters, paging and export, a
// detail page that shows a decision's evidence chain as a timeline, a
// page per image digest, a form that grants a time-boxed exception for
// one image digest, and a page of exceptions that revokes them. Pages
// are rendered on the server with no JavaScript and nothing loaded from
// elsewhere, so it works in air-gapped clusters.
//
// Every page but the login prompt needs a session: a bearer token checked
// by an Authenticator (TokenReview in a cluster) and kept as a signed,
// expiring cookie. What a user may see and grant is asked of an
// Authorizer (SubjectAccessReview): list on decisions.buildguard.dev to
// see a namespace's decisions; list, create and delete on
// buildpolicyexceptions to see, grant and revoke exceptions.
// docs/review.md describes it.
package review

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
)

// Defaults of Config's fields.
const (
	DefaultSessionTTL      = time.Hour
	DefaultMaxException    = 30 * 24 * time.Hour
	DefaultAuthzCacheTTL   = 30 * time.Second
	DefaultRequestTimeout  = 10 * time.Second
	DefaultLoginFailures   = 10
	DefaultLoginWindow     = 5 * time.Minute
	defaultConcurrentLogin = 8
	maxFormBytes           = 64 << 10
	maxAuthzCache          = 10000
)

// Config configures a Handler.
type Config struct {
	// Store holds the decision records. Required.
	Store evidence.Store
	// Authenticator checks login tokens. Required.
	Authenticator Authenticator
	// Authorizer decides what a user may see and grant. Required.
	Authorizer Authorizer
	// Granter grants exceptions; nil turns granting off and GrantOff
	// says why on the detail page.
	Granter  Granter
	GrantOff string
	// Exceptions lists exceptions for the exceptions page and revokes
	// them; nil leaves the page empty, saying so.
	Exceptions ExceptionSource
	// Key signs session cookies; at least MinKeyLen bytes. Replicas
	// behind one Service need the same key. The default is random, so
	// sessions end when the process does.
	Key []byte
	// SessionTTL is how long a login lasts. The default is 1h.
	SessionTTL time.Duration
	// MaxException is the longest expiry a granted exception may have.
	// The default is 30 days.
	MaxException time.Duration
	// AuthzCacheTTL is how long an Authorizer's answer is reused within a
	// session. The default is 30s.
	AuthzCacheTTL time.Duration
	// Timeout bounds each call to the store, the authenticator, the
	// authorizer and the granter. The default is 10s.
	Timeout time.Duration
	// LoginFailures is how many failed logins a remote address (an IPv4
	// address, or an IPv6 /64) may make per LoginWindow; more are refused
	// with 429 without asking the Authenticator. Behind a proxy that is
	// the proxy's address. The default is 10 per 5 minutes.
	LoginFailures int
	LoginWindow   time.Duration
	// Clock tells the time of sessions, exceptions and pages. The
	// default, nil, is the real clock.
	Clock clock.Clock
	// Random is the source of session IDs and CSRF tokens. The default
	// is crypto/rand.
	Random io.Reader
	// Log is the logger. The default discards.
	Log *slog.Logger
}

// Handler serves the review UI. Create it with New.
type Handler struct {
	c        Config
	codec    sessionCodec
	mux      *http.ServeMux
	pages    map[string]*template.Template
	origin   *http.CrossOriginProtection
	logins   chan struct{}
	limiter  *loginLimiter
	revoked  revocations
	authzMu  sync.Mutex
	authzMap map[authzKey]authzEntry
}

type authzKey struct {
	session string
	attrs   Attributes
}

type authzEntry struct {
	allowed bool
	expires time.Time
}

//go:embed templates static
var files embed.FS

// New checks c and returns its Handler.
func New(c Config) (*Handler, error) {
	switch {
	case c.Store == nil:
		return nil, errors.New("review: Store is required")
	case c.Authenticator == nil:
		return nil, errors.New("review: Authenticator is required")
	case c.Authorizer == nil:
		return nil, errors.New("review: Authorizer is required")
	}
	c.Clock = clock.OrReal(c.Clock)
	if c.Random == nil {
		c.Random = rand.Reader
	}
	c.Log = logger.OrDiscard(c.Log)
	if c.SessionTTL <= 0 {
		c.SessionTTL = DefaultSessionTTL
	}
	if c.MaxException <= 0 {
		c.MaxException = DefaultMaxException
	}
	if c.AuthzCacheTTL <= 0 {
		c.AuthzCacheTTL = DefaultAuthzCacheTTL
	}
	if c.LoginFailures <= 0 {
		c.LoginFailures = DefaultLoginFailures
	}
	if c.LoginWindow <= 0 {
		c.LoginWindow = DefaultLoginWindow
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultRequestTimeout
	}
	if c.Key == nil {
		k, err := NewKey()
		if err != nil {
			return nil, err
		}
		c.Key = k
	}
	if len(c.Key) < MinKeyLen {
		return nil, fmt.Errorf("review: session key has %d bytes, want at least %d", len(c.Key), MinKeyLen)
	}
	pages, err := parseTemplates()
	if err != nil {
		return nil, err
	}
	h := &Handler{
		c: c, codec: sessionCodec{key: c.Key}, pages: pages,
		origin:   http.NewCrossOriginProtection(),
		logins:   make(chan struct{}, defaultConcurrentLogin),
		limiter:  newLoginLimiter(c.LoginFailures, c.LoginWindow),
		authzMap: map[authzKey]authzEntry{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /static/review.css", h.css)
	mux.HandleFunc("GET /login", h.loginPage)
	mux.HandleFunc("POST /login", h.login)
	mux.HandleFunc("POST /logout", h.logout)
	mux.HandleFunc("GET /{$}", h.withSession(h.overview))
	mux.HandleFunc("GET /decisions", h.withSession(h.list))
	mux.HandleFunc("GET /decisions.csv", h.withSession(h.export("csv")))
	mux.HandleFunc("GET /decisions.json", h.withSession(h.export("json")))
	mux.HandleFunc("GET /images/{digest}", h.withSession(h.image))
	mux.HandleFunc("GET /exceptions", h.withSession(h.exceptions))
	mux.HandleFunc("POST /exceptions/revoke", h.withSession(h.revoke))
	mux.HandleFunc("GET /decisions/{id}", h.withSession(h.detail))
	mux.HandleFunc("GET /decisions/{id}/raw", h.withSession(h.raw))
	mux.HandleFunc("POST /decisions/{id}/exceptions", h.withSession(h.grant))
	mux.HandleFunc("/", h.withSession(func(w http.ResponseWriter, r *http.Request, s *session) {
		h.fail(w, r, s, http.StatusNotFound, "There is no such page.")
	}))
	h.mux = mux
	return h, nil
}

// ServeHTTP implements http.Handler. Every response carries security
// headers; every request that changes something must come from this
// origin.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Cache-Control", "no-store")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if err := h.origin.Check(r); err != nil {
			h.fail(w, r, nil, http.StatusForbidden, "Refused: the request did not come from this site ("+err.Error()+").")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	}
	h.mux.ServeHTTP(w, r)
}

// ctx bounds one call made for a request.
func (h *Handler) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), h.c.Timeout)
}

// session returns the request's valid session, or nil.
func (h *Handler) session(r *http.Request) *session {
	c, err := r.Cookie(CookieName)
	if err != nil {
		return nil
	}
	s, err := h.codec.decode(c.Value, h.c.Clock.Now())
	if err != nil || h.revoked.revoked(s) {
		return nil
	}
	return &s
}

// withSession sends a request without a session to the login prompt.
func (h *Handler) withSession(f func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := h.session(r)
		if s == nil {
			if r.Method != http.MethodGet {
				h.fail(w, r, nil, http.StatusUnauthorized, "Your session has ended; log in again.")
				return
			}
			http.Redirect(w, r, "/login?next="+urlQueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		f(w, r, s)
	}
}

// checkCSRF compares the form's token with the session's.
func checkCSRF(r *http.Request, s *session) bool {
	return subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(s.CSRF)) == 1
}

// allowed asks the Authorizer, reusing answers for AuthzCacheTTL within a
// session. Errors are not cached.
func (h *Handler) allowed(r *http.Request, s *session, a Attributes) (bool, error) {
	now := h.c.Clock.Now()
	k := authzKey{session: s.ID, attrs: a}
	h.authzMu.Lock()
	e, ok := h.authzMap[k]
	h.authzMu.Unlock()
	if ok && now.Before(e.expires) {
		return e.allowed, nil
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	ok, err := h.c.Authorizer.Allowed(ctx, s.User, a)
	if err != nil {
		return false, err
	}
	h.authzMu.Lock()
	if len(h.authzMap) >= maxAuthzCache {
		for k, e := range h.authzMap {
			if !now.Before(e.expires) {
				delete(h.authzMap, k)
			}
		}
		if len(h.authzMap) >= maxAuthzCache {
			clear(h.authzMap)
		}
	}
	h.authzMap[k] = authzEntry{allowed: ok, expires: now.Add(h.c.AuthzCacheTTL)}
	h.authzMu.Unlock()
	return ok, nil
}

func (h *Handler) css(w http.ResponseWriter, r *http.Request) {
	b, err := files.ReadFile("static/review.css")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/css; charset=utf-8")
	w.Header().Set("Cache-Control", "public, max-age=3600")
	w.Write(b)
}
