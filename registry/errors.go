package registry

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"buildguard.dev/buildguard/policy"
)

// classify sorts a lookup error into the kinds the policy knows. What
// could not be sent or received — a refused or broken connection, a body
// cut off, a deadline, a 5xx or 429 — is unavailable. Everything else
// comes from a registry that answered: bytes that do not match their
// digest or size, a manifest or config that does not decode. That is an
// invalid image whatever the error's text says: an "unexpected EOF" from
// decoding a config cut short with the right digest is not a network
// fault, and failurePolicy allow must not admit it.
func classify(err error) policy.ErrorKind {
	var re *policy.ResolveError
	if errors.As(err, &re) {
		return re.Kind
	}
	var ce *contentError
	if errors.As(err, &ce) {
		return policy.ErrTooLarge
	}
	var te *transport.Error
	if errors.As(err, &te) {
		for _, d := range te.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
				return policy.ErrNotFound
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return policy.ErrUnauthorized
			}
		}
		switch {
		case te.StatusCode == http.StatusNotFound:
			return policy.ErrNotFound
		case te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden:
			return policy.ErrUnauthorized
		case te.StatusCode >= 500 || te.StatusCode == http.StatusTooManyRequests:
			return policy.ErrUnavailable
		}
		return policy.ErrInvalidImage
	}
	var ne net.Error
	var fe *forbiddenError
	var rd *readError
	switch {
	case errors.As(err, &fe) && fe.address:
		return policy.ErrForbiddenAddress
	case errors.As(err, &fe):
		// Plain HTTP refused: go-containerregistry falls back to it for
		// a private registry that did not answer over HTTPS.
		return policy.ErrUnavailable
	case errors.As(err, &rd):
		return policy.ErrUnavailable
	// *url.Error is a net.Error: whatever failed while a request was sent
	// or its response header awaited.
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled), errors.As(err, &ne):
		return policy.ErrUnavailable
	}
	return policy.ErrInvalidImage
}

// resolveError turns any lookup error into a *policy.ResolveError.
func resolveError(err error) error {
	var re *policy.ResolveError
	if errors.As(err, &re) {
		return re
	}
	return &policy.ResolveError{Kind: classify(err), Message: redact(err.Error())}
}

// redact drops query strings from URLs in messages: registries put
// short-lived credentials in redirect URLs.
func redact(s string) string {
	fields := strings.Fields(s)
	for i, f := range fields {
		if (strings.HasPrefix(f, "http://") || strings.HasPrefix(f, "https://") || strings.HasPrefix(f, "\"http")) && strings.Contains(f, "?") {
			fields[i] = f[:strings.Index(f, "?")] + "?REDACTED"
		}
	}
	return strings.Join(fields, " ")
}
