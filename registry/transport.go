package registry

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"syscall"
	"time"

	"buildguard.dev/buildguard/internal/forbidden"
	"buildguard.dev/buildguard/policy"
)

// forbiddenError is a request buildguard refused to send. address is set
// when it was refused for where it leads: a link-local or cloud-metadata
// address, a policy finding rather than an outage.
type forbiddenError struct {
	msg     string
	address bool
}

func (e *forbiddenError) Error() string { return e.msg }

// newSafeTransport returns the default base transport: short timeouts,
// TLS 1.2 or later, and a dialer that refuses link-local and metadata
// addresses after name resolution (with resolver, or the system's when
// nil), so neither a registry host name nor a redirect can lead to them.
func newSafeTransport(resolver *net.Resolver) *http.Transport {
	d := &net.Dialer{
		Timeout:   2 * time.Second,
		KeepAlive: 30 * time.Second,
		Resolver:  resolver,
		Control: func(network, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return &forbiddenError{msg: fmt.Sprintf("unparsable dial address %q", address)}
			}
			if forbidden.Addr(ap.Addr()) {
				return &forbiddenError{msg: fmt.Sprintf("refusing to dial %s: link-local or cloud-metadata address", ap.Addr()), address: true}
			}
			return nil
		},
	}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   3 * time.Second,
		ResponseHeaderTimeout: 5 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   DefaultPerRegistry,
		ForceAttemptHTTP2:     true,
	}
}

type insecureKey struct{}

func withInsecure(ctx context.Context, ok bool) context.Context {
	return context.WithValue(ctx, insecureKey{}, ok)
}

func insecureOf(ctx context.Context) bool {
	ok, _ := ctx.Value(insecureKey{}).(bool)
	return ok
}

// guardTransport bounds concurrent requests per registry host, refuses
// plain HTTP unless the lookup allowed it, and reports every request.
// go-containerregistry falls back to HTTP on its own for loopback and
// RFC 1918 registries; this is where buildguard says no.
type guardTransport struct {
	inner  http.RoundTripper
	per    int
	obs    Observer
	budget *budget

	mu   sync.Mutex
	sems map[string]chan struct{}
}

func (t *guardTransport) sem(host string) chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.sems[host]
	if !ok {
		s = make(chan struct{}, t.per)
		t.sems[host] = s
	}
	return s
}

func (t *guardTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	// The dialer checks addresses it dials; with a proxy it dials only the
	// proxy, so the URL's host (a redirect's, a token realm's) is checked
	// here too.
	if policy.ForbiddenHost(req.URL.Host) {
		return nil, &forbiddenError{msg: fmt.Sprintf("refusing %s: link-local or cloud-metadata address", req.URL.Host), address: true}
	}
	if req.URL.Scheme == "http" {
		if ok, _ := ctx.Value(insecureKey{}).(bool); !ok {
			return nil, &forbiddenError{msg: fmt.Sprintf("refusing plain HTTP to %s: not in registries.insecure", req.URL.Host)}
		}
	}
	s := t.sem(req.URL.Host)
	select {
	case s <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	start := time.Now()
	resp, err := t.inner.RoundTrip(req)
	status := 0
	if resp != nil {
		status = resp.StatusCode
	}
	t.obs.Request(req.URL.Host, req.Method, status, time.Since(start))
	if err != nil {
		<-s
		return nil, err
	}
	if loc, err := resp.Location(); err == nil && resp.StatusCode/100 == 3 && policy.ForbiddenHost(loc.Host) {
		// Refused here, where every redirect passes, before the client
		// follows it: for a blob store's redirect as for a token realm's.
		resp.Body.Close()
		<-s
		return nil, &forbiddenError{msg: fmt.Sprintf("refusing the redirect of %s to %s: link-local or cloud-metadata address", redactURL(req.URL), loc.Host), address: true}
	}
	b := &releaseBody{ReadCloser: resp.Body, kind: kindOf(req), url: redactURL(req.URL)}
	b.limit = limitOf(b.kind)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		// Read for the error it carries: cut short, never refused.
		b.limit, b.truncate = maxErrorBodyBytes, true
	} else if b.kind == kindManifest {
		b.values = &jsonCounter{}
	}
	if req.Method != http.MethodHead && !b.truncate && resp.ContentLength > b.limit {
		// Refused before a byte of it is read.
		resp.Body.Close()
		<-s
		return nil, tooLarge(b.kind, b.url, resp.ContentLength)
	}
	if req.Method != http.MethodHead && !b.truncate && b.kind != kindOther {
		// Room for the whole body before a byte of it is read.
		b.reserved = b.limit
		if resp.ContentLength >= 0 {
			b.reserved = resp.ContentLength
		}
		b.lease = leaseOf(ctx)
		if b.lease == nil {
			// Provenance's signatures and attestations: lookups under way.
			b.lease, b.ownLease = t.budget.lease(underWay), true
		}
		if err := b.lease.acquire(ctx, b.reserved); err != nil {
			resp.Body.Close()
			<-s
			return nil, err
		}
	}
	b.release = func() { b.once.Do(func() { <-s }) }
	// A body nobody closes must not hold the slot, or its bytes of the
	// budget, past its request.
	b.stop = context.AfterFunc(ctx, func() {
		b.release()
		if b.ownLease {
			b.lease.release()
		}
	})
	resp.Body = b
	return resp, nil
}

// redactURL is u without its query, where registries put short-lived
// credentials in redirects.
func redactURL(u *url.URL) string {
	v := *u
	if v.RawQuery != "" {
		v.RawQuery = "REDACTED"
	}
	return v.String()
}

// releaseBody gives the registry's slot back when the body is closed or
// the request's context ends, whichever comes first. It reads no more
// than limit bytes: past them it fails with a *contentError (or, for an
// error response, ends). Its read errors are *readError: the body is
// what the network delivered, and whatever fails after it was read whole
// is the content's fault.
type releaseBody struct {
	io.ReadCloser
	kind     bodyKind
	url      string
	limit    int64
	truncate bool
	values   *jsonCounter // counted for manifests; nil otherwise
	read     int64
	err      error
	// lease holds reserved bytes of the budget for the body: the
	// lookup's, until it has decoded what it read, or the body's own
	// (ownLease), until it is closed.
	lease    *lease
	ownLease bool
	reserved int64

	once    sync.Once
	release func()
	stop    func() bool
}

func (b *releaseBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	// One byte past the limit tells a body of exactly limit bytes from a
	// longer one.
	if room := b.limit + 1 - b.read; int64(len(p)) > room {
		p = p[:room]
	}
	n, err := b.ReadCloser.Read(p)
	b.read += int64(n)
	if b.read > b.limit {
		n -= int(b.read - b.limit)
		b.read = b.limit
		if b.truncate {
			return n, io.EOF
		}
		b.err = tooLarge(b.kind, b.url, -1)
		return n, b.err
	}
	if b.values != nil {
		if b.values.scan(p[:n]); b.values.values() > maxJSONValues {
			b.err = tooManyValues(b.kind.String() + " " + b.url)
			return n, b.err
		}
	}
	if err == io.EOF && b.lease != nil && b.reserved > b.read {
		b.lease.giveBack(b.reserved - b.read)
		b.reserved = b.read
	}
	if err != nil && err != io.EOF {
		err = &readError{err: err}
	}
	return n, err
}

func (b *releaseBody) Close() error {
	err := b.ReadCloser.Close()
	b.stop()
	b.release()
	if b.ownLease {
		b.lease.release()
	}
	return err
}

// readError is a response body that could not be read to its end: the
// connection broke or the deadline passed while it was being sent.
type readError struct{ err error }

func (e *readError) Error() string { return "reading the response: " + e.err.Error() }
func (e *readError) Unwrap() error { return e.err }
