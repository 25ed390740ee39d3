package registry

import (
	"context"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"buildguard.dev/buildguard/policy"
)

// Puller returns a go-containerregistry puller and a context for talking
// to r's registry the way Resolve does: r's credentials, the same safe
// transport (no link-local or metadata addresses, HTTPS unless
// r.Insecure, the caps on manifests and blobs, the bound on the bytes
// held at once), the per-registry bound and the observer. Package
// provenance fetches signatures and attestations with it. Every call on
// the puller must be given the returned context or one derived from it.
func (c *Client) Puller(ctx context.Context, r Request) (context.Context, *remote.Puller, error) {
	if policy.ForbiddenHost(r.Ref.Context().RegistryStr()) {
		return nil, nil, forbiddenRegistry()
	}
	if r.Auth.Keychain == nil {
		r.Auth = Anonymous()
	}
	p, err := c.puller(r.Auth)
	if err != nil {
		return nil, nil, err
	}
	return withInsecure(ctx, r.Insecure), p, nil
}

// ErrorOf classifies an error of a request made with Puller as a
// *policy.ResolveError (not-found, unauthorized, unavailable…), with
// credentials redacted from URLs.
func ErrorOf(err error) *policy.ResolveError {
	re, _ := resolveError(err).(*policy.ResolveError)
	return re
}
