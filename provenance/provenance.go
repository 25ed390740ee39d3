// Package provenance verifies the signatures and attestations of images
// against a policy's trust settings — cosign and Notation signatures, SLSA
// provenance and verification summary attestations, and Sigstore bundles
// (v0.3, as actions/attest-build-provenance writes them) — and returns
// what it found as policy facts.
//
// Signatures, attestations and bundles are discovered with the OCI 1.1
// referrers API and the cosign tag scheme (sha256-<hex>.sig, .att) for
// what the referrers do not hold. Everything is verified offline: keys and the
// Sigstore trusted root (Fulcio CAs, Rekor keys, CT logs) are
// configuration, and nothing is ever fetched from a TUF repository or a
// transparency log.
//
// Two caches keep the cost of admission low: the raw material fetched for
// a digest (bounded LRU; an empty answer is kept briefly), and the result
// of verifying it under one policy's trust settings. The material is
// fetched once however many keys and identities a policy trusts.
package provenance

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	"github.com/sigstore/cosign/v2/pkg/cosign/bundle"
	"github.com/sigstore/cosign/v2/pkg/oci"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"golang.org/x/sync/singleflight"
	"k8s.io/apimachinery/pkg/util/cache"

	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
)

// Defaults of the options.
const (
	DefaultNegativeTTL   = 30 * time.Second
	DefaultMaterialTTL   = 10 * time.Minute
	DefaultMaxDigests    = 10000
	DefaultMaxConcurrent = 32
	maxArtifacts         = 32 // signatures or attestations per digest
	maxTrustSettings     = 256
)

// Artifact types of cosign's OCI 1.1 referrers and of Sigstore bundles.
const (
	ArtifactTypeSignature   = "application/vnd.dev.cosign.artifact.sig.v1+json"
	ArtifactTypeAttestation = "application/vnd.dev.cosign.artifact.att.v1+json"
	ArtifactTypeBundle      = "application/vnd.dev.sigstore.bundle.v0.3+json"
)

// Cosign's layer annotations.
const (
	annSignature   = "dev.cosignproject.cosign/signature"
	annCertificate = "dev.sigstore.cosign/certificate"
	annChain       = "dev.sigstore.cosign/chain"
	annBundle      = "dev.sigstore.cosign/bundle"
)

// Registry gives a puller for an image's registry; *registry.Client is
// one.
type Registry interface {
	Puller(ctx context.Context, r registry.Request) (context.Context, *remote.Puller, error)
}

// Option configures a Verifier.
type Option func(*Verifier)

// WithNegativeTTL sets how long an answer that found no trusted signature
// or attestation for a digest is reused, so that a signature added later
// is seen soon. The default is 30s.
func WithNegativeTTL(d time.Duration) Option { return func(v *Verifier) { v.negTTL = d } }

// WithMaterialTTL sets how long signatures and attestations fetched for a
// digest, and a positive verification result, are reused. The default is
// 10m.
func WithMaterialTTL(d time.Duration) Option { return func(v *Verifier) { v.matTTL = d } }

// WithMaxDigests bounds the digests whose material and results are kept.
// The default is 10000.
func WithMaxDigests(n int) Option { return func(v *Verifier) { v.maxDigests = n } }

// WithMaxConcurrent bounds concurrent verifications. The default is 32.
func WithMaxConcurrent(n int) Option { return func(v *Verifier) { v.maxConcurrent = n } }

// WithRegisterer registers buildguard_provenance_verification_duration_seconds
// on reg: how long each Verify took, cache hits included, as admission
// waits for it. The default registers none.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(v *Verifier) {
		v.took = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "buildguard_provenance_verification_duration_seconds",
			Help:    "Time to verify an image's signatures and attestations: fetching them (or finding them cached) and checking them against the policy's trust settings.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		})
		reg.MustRegister(v.took)
	}
}

// WithClock sets the clock of the caches. The default is the real clock.
func WithClock(c clock.Clock) Option { return func(v *Verifier) { v.clock = clock.OrReal(c) } }

// Verifier verifies signatures and attestations. It is safe for
// concurrent use.
type Verifier struct {
	// Log receives trust settings that cannot be used (a key or trusted
	// root file that cannot be read), once per policy and error until
	// they can be used again. Set it before the first Verify. The default
	// discards.
	Log *slog.Logger

	reg           Registry
	negTTL        time.Duration
	matTTL        time.Duration
	maxDigests    int
	maxConcurrent int
	clock         clock.Clock

	material *cache.LRUExpireCache // repo@digest → *material
	results  *cache.LRUExpireCache // trust fingerprint, repo@digest → *result
	trusts   *cache.LRUExpireCache // trust fingerprint → *trust
	flight   singleflight.Group
	sem      chan struct{}

	mu          sync.Mutex
	trustErrors map[string]string // policy name → last trust error logged

	took prometheus.Histogram // nil: not measured
}

// New returns a Verifier that fetches through reg.
func New(reg Registry, opts ...Option) *Verifier {
	v := &Verifier{reg: reg, negTTL: DefaultNegativeTTL, matTTL: DefaultMaterialTTL, maxDigests: DefaultMaxDigests, maxConcurrent: DefaultMaxConcurrent, clock: clock.Real{}}
	for _, o := range opts {
		o(v)
	}
	if v.maxDigests < 1 {
		v.maxDigests = 1
	}
	if v.maxConcurrent < 1 {
		v.maxConcurrent = 1
	}
	v.material = cache.NewLRUExpireCacheWithClock(v.maxDigests, v.clock)
	v.results = cache.NewLRUExpireCacheWithClock(v.maxDigests, v.clock)
	v.trusts = cache.NewLRUExpireCacheWithClock(maxTrustSettings, v.clock)
	v.sem = make(chan struct{}, v.maxConcurrent)
	return v
}

// artifact is one signature or attestation as fetched: a cosign
// signature, the JSON of a Sigstore bundle, or a Notary Project
// signature envelope.
type artifact struct {
	sig    oci.Signature
	bundle []byte
	source string // tag, referrers, bundle
	err    string // set when it could not be read

	// notation is a Notary Project envelope of media type notationType,
	// signing subject.
	notation     []byte
	notationType string
	subject      v1.Descriptor
}

type material struct {
	sigs, atts []artifact
	fetched    time.Time
}

type result struct {
	sigs []policy.Signature
	atts []policy.Attestation
}

func (r *result) positive() bool {
	for _, s := range r.sigs {
		if s.Verified {
			return true
		}
	}
	for _, a := range r.atts {
		if a.Verified {
			return true
		}
	}
	return false
}

// Verify checks the signatures and attestations of img (resolved from
// req) against p's trust settings. For an index, the children are
// checked too when the index's own signatures or attestations do not
// settle the question. It never returns nil.
func (v *Verifier) Verify(ctx context.Context, req registry.Request, img *policy.Image, p *policy.Policy) *policy.Provenance {
	if v.took != nil {
		start := time.Now()
		defer func() { v.took.Observe(time.Since(start).Seconds()) }()
	}
	ts := p.Trust()
	tr, err := v.trust(ts)
	v.logTrust(p.Name(), err)
	if err != nil {
		return &policy.Provenance{Err: &policy.ResolveError{Kind: policy.ErrTrustConfig, Message: err.Error()}}
	}
	repo := req.Ref.Context()
	out := &policy.Provenance{}
	top, rerr := v.digest(ctx, req, tr, repo.Digest(img.Digest), "")
	if rerr != nil {
		return &policy.Provenance{Err: rerr}
	}
	out.Signatures, out.Attestations = append(out.Signatures, top.sigs...), append(out.Attestations, top.atts...)
	if !img.Index {
		return out
	}
	sigDone := ts.On == policy.SignaturesOnIndex || (ts.On != policy.SignaturesOnEach && anyVerifiedSig(top.sigs))
	attDone := !ts.Attestations || anyVerifiedAtt(top.atts, img.Digest)
	if sigDone && attDone {
		return out
	}
	children := make([]*result, len(img.Platforms))
	errs := make([]*policy.ResolveError, len(img.Platforms))
	var wg sync.WaitGroup
	for i, pl := range img.Platforms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			children[i], errs[i] = v.digest(ctx, req, tr, repo.Digest(pl.Digest), pl.Platform)
		}()
	}
	wg.Wait()
	for i := range children {
		if errs[i] != nil {
			return &policy.Provenance{Err: errs[i]}
		}
		out.Signatures = append(out.Signatures, children[i].sigs...)
		out.Attestations = append(out.Attestations, children[i].atts...)
	}
	return out
}

// logTrust logs a policy's unusable trust settings when the error is new
// for that policy, and when they become usable again.
func (v *Verifier) logTrust(name string, err error) {
	if v.Log == nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	last, failed := v.trustErrors[name]
	switch {
	case err == nil && failed:
		delete(v.trustErrors, name)
		v.Log.Info("policy trust settings loaded; signatures are verified again", "policy", name)
	case err != nil && last != err.Error():
		if v.trustErrors == nil {
			v.trustErrors = map[string]string{}
		}
		if len(v.trustErrors) >= maxTrustSettings && !failed {
			return
		}
		v.trustErrors[name] = err.Error()
		v.Log.Error("policy trust settings unusable: no signature or attestation verifies under this policy until fixed", "policy", name, "error", err.Error())
	}
}

func anyVerifiedSig(s []policy.Signature) bool {
	for _, x := range s {
		if x.Verified {
			return true
		}
	}
	return false
}

func anyVerifiedAtt(as []policy.Attestation, digest string) bool {
	for _, a := range as {
		if a.Verified {
			for _, d := range a.SubjectDigests {
				if d == digest {
					return true
				}
			}
		}
	}
	return false
}

// digest verifies the material of one digest, from the result cache when
// it can. A negative result is recomputed from freshly fetched material
// when the material is older than the negative TTL.
func (v *Verifier) digest(ctx context.Context, req registry.Request, tr *trust, d name.Digest, platform string) (*result, *policy.ResolveError) {
	key := tr.fingerprint + "\x00" + d.Name()
	if r, ok := v.results.Get(key); ok {
		return r.(*result), nil
	}
	m, err := v.fetch(ctx, req, d, false)
	if err != nil {
		return nil, err
	}
	r, cerr := v.judge(ctx, tr, m, d, platform)
	if cerr != nil {
		return nil, cerr
	}
	if !r.positive() && v.clock.Now().Sub(m.fetched) > v.negTTL {
		if m, err = v.fetch(ctx, req, d, true); err != nil {
			return nil, err
		}
		if r, cerr = v.judge(ctx, tr, m, d, platform); cerr != nil {
			return nil, cerr
		}
	}
	ttl := v.negTTL
	if r.positive() {
		ttl = v.matTTL
	}
	v.results.Add(key, r, ttl)
	return r, nil
}

// judge verifies every signature and attestation of m under tr. The
// material is in memory: N keys × M signatures cost N×M signature checks
// and no request.
func (v *Verifier) judge(ctx context.Context, tr *trust, m *material, d name.Digest, platform string) (*result, *policy.ResolveError) {
	select {
	case v.sem <- struct{}{}:
		defer func() { <-v.sem }()
	case <-ctx.Done():
		return nil, &policy.ResolveError{Kind: policy.ErrUnavailable, Message: "verification did not start in time: " + ctx.Err().Error()}
	}
	h, err := v1.NewHash(d.DigestStr())
	if err != nil {
		return nil, &policy.ResolveError{Kind: policy.ErrInvalidImage, Message: err.Error()}
	}
	r := &result{}
	for _, a := range m.sigs {
		switch {
		case a.bundle != nil:
			r.sigs = append(r.sigs, judgeBundleSignature(tr, a, h, platform))
			continue
		case a.notation != nil || a.notationType != "":
			r.sigs = append(r.sigs, judgeNotation(ctx, tr, a, d, platform))
			continue
		}
		s := policy.Signature{On: d.DigestStr(), Platform: platform, Source: a.source, Error: a.err, Type: "cosign"}
		if a.sig != nil {
			id, err := tr.verify(ctx, a.sig, h, false)
			s.KeyFingerprint, s.Issuer, s.Subject, s.GitHub = id.fingerprint, id.issuer, id.subject, id.github
			if err != nil {
				s.Error = err.Error()
			} else {
				s.Verified, s.SignedAt, s.SignedAtSource = true, id.signedAt, id.signedAtSource
			}
		}
		r.sigs = append(r.sigs, s)
	}
	for _, a := range m.atts {
		at := policy.Attestation{Source: a.source, Error: a.err}
		switch {
		case a.bundle != nil:
			at = judgeBundleAttestation(tr, a, h)
		case a.sig != nil:
			at = judgeAttestation(ctx, tr, a, h)
		}
		r.atts = append(r.atts, at)
	}
	return r, nil
}

func judgeAttestation(ctx context.Context, tr *trust, a artifact, h v1.Hash) policy.Attestation {
	at := policy.Attestation{Source: a.source}
	payload, err := a.sig.Payload()
	if err != nil {
		at.Error = err.Error()
		return at
	}
	st, perr := ParseEnvelope(payload)
	id, verr := tr.verify(ctx, a.sig, h, true)
	at.GitHub = id.github
	if verr == nil {
		at.SignedAt, at.SignedAtSource = id.signedAt, id.signedAtSource
	}
	return attestationFacts(at, st, perr, id, verr, h)
}

// judgeNotation verifies a Notary Project signature of d.
func judgeNotation(ctx context.Context, tr *trust, a artifact, d name.Digest, platform string) policy.Signature {
	s := policy.Signature{On: d.DigestStr(), Platform: platform, Source: a.source, Type: "notation", Error: a.err,
		Notation: &policy.NotationResult{Envelope: envelopeName(a.notationType)}}
	switch {
	case a.err != "":
		return s
	case tr.notation == nil:
		s.Error = "a Notary Project signature; signatures.notation trusts no certificate"
		return s
	case a.subject.Digest.String() != d.DigestStr():
		s.Error = fmt.Sprintf("Notary Project signature manifest is about %s, not %s", a.subject.Digest, d.DigestStr())
		return s
	}
	o := tr.notation.verify(ctx, a.notation, a.notationType, a.subject, d.Context().Name())
	s.Notation = &o.res
	s.KeyFingerprint, s.Issuer, s.Subject = o.id.fingerprint, o.id.issuer, o.id.subject
	if o.err != nil {
		s.Error = o.err.Error()
		return s
	}
	s.Verified = true
	if !o.signedAt.IsZero() {
		s.SignedAt, s.SignedAtSource = o.signedAt, policy.TimeSourceTimestampAuthority
	}
	return s
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// fetch returns the signatures and attestations stored for d: from the
// cache, or discovered with the referrers API (one request, for both) and
// the cosign tag scheme for the kinds the referrers do not hold.
// Concurrent fetches of one digest are coalesced.
func (v *Verifier) fetch(ctx context.Context, req registry.Request, d name.Digest, force bool) (*material, *policy.ResolveError) {
	key := d.Name()
	if !force {
		if m, ok := v.material.Get(key); ok {
			return m.(*material), nil
		}
	}
	ch := v.flight.DoChan(key, func() (any, error) {
		m, err := v.discover(ctx, req, d)
		if err != nil {
			return nil, err
		}
		ttl := v.matTTL
		if len(m.sigs) == 0 && len(m.atts) == 0 {
			ttl = v.negTTL
		}
		v.material.Add(key, m, ttl)
		return m, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			re := registry.ErrorOf(res.Err)
			if re == nil {
				re = &policy.ResolveError{Kind: policy.ErrUnavailable, Message: res.Err.Error()}
			}
			return nil, re
		}
		return res.Val.(*material), nil
	case <-ctx.Done():
		return nil, &policy.ResolveError{Kind: policy.ErrUnavailable, Message: ctx.Err().Error()}
	}
}

func (v *Verifier) discover(ctx context.Context, req registry.Request, d name.Digest) (*material, error) {
	req.Ref = d
	ctx, p, err := v.reg.Puller(ctx, req)
	if err != nil {
		return nil, err
	}
	m := &material{fetched: v.clock.Now()}
	// cosignSigs: the referrers held cosign signatures, so the .sig tag
	// is not asked; Notary Project signatures do not count.
	cosignSigs := false
	idx, err := remote.Referrers(d, remote.Reuse(p), remote.WithContext(ctx))
	if err != nil && !notFound(err) {
		return nil, err
	}
	if idx != nil {
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, err
		}
		for _, desc := range im.Manifests {
			if len(m.sigs)+len(m.atts) >= 2*maxArtifacts {
				break
			}
			ref := d.Context().Digest(desc.Digest.String())
			at := desc.ArtifactType
			var got *remote.Descriptor
			if vagueArtifactType(at) {
				// Some registries (go-containerregistry's own, cosign v2's
				// fallback index) list the config's media type, not the
				// manifest's artifactType: read the manifest to know.
				if got, err = p.Get(ctx, ref); err != nil {
					return nil, err
				}
				if at, err = manifestArtifactType(got.Manifest); err != nil {
					continue // not a manifest of ours
				}
			}
			switch {
			case at == ArtifactTypeSignature:
				arts, err := artifacts(ctx, p, ref, got, "referrers", false)
				if err != nil {
					return nil, err
				}
				m.sigs = append(m.sigs, arts...)
				cosignSigs = true
			case at == ArtifactTypeAttestation:
				arts, err := artifacts(ctx, p, ref, got, "referrers", true)
				if err != nil {
					return nil, err
				}
				m.atts = append(m.atts, arts...)
			case at == ArtifactTypeNotation:
				a, err := notationArtifact(ctx, p, ref, got)
				if err != nil {
					return nil, err
				}
				m.sigs = append(m.sigs, a)
			case strings.HasPrefix(at, bundleMediaTypePrefix):
				a, att, err := bundleArtifact(ctx, p, ref, got)
				if err != nil {
					return nil, err
				}
				if att {
					m.atts = append(m.atts, a)
				} else {
					m.sigs = append(m.sigs, a)
					cosignSigs = true
				}
			default:
				// Not ours: SBOMs, other tools' referrers.
			}
		}
	}
	prefix := strings.Replace(d.DigestStr(), ":", "-", 1)
	if !cosignSigs {
		arts, err := artifacts(ctx, p, d.Context().Tag(prefix+".sig"), nil, "tag", false)
		if err != nil && !notFound(err) {
			return nil, err
		}
		m.sigs = append(m.sigs, arts...)
	}
	if len(m.atts) == 0 {
		arts, err := artifacts(ctx, p, d.Context().Tag(prefix+".att"), nil, "tag", true)
		if err != nil && !notFound(err) {
			return nil, err
		}
		m.atts = arts
	}
	return m, nil
}

// notationArtifact reads a Notary Project signature referrer: its
// manifest and its one envelope layer.
func notationArtifact(ctx context.Context, p *remote.Puller, ref name.Digest, desc *remote.Descriptor) (artifact, error) {
	a := artifact{source: "referrers", notationType: notationJWS}
	desc, err := getManifest(ctx, p, ref, desc)
	if err != nil {
		return a, err
	}
	mf, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		a.err = "unreadable Notary Project signature manifest: " + err.Error()
		return a, nil
	}
	mt, layer, subject, err := notationLayer(mf)
	if err != nil {
		a.err = err.Error()
		return a, nil
	}
	a.notationType, a.subject = mt, subject
	if a.notation, err = readBlob(ctx, p, ref.Context().Digest(layer.Digest.String())); err != nil {
		return a, err
	}
	return a, nil
}

// vagueArtifactType reports whether a referrers index entry's artifact
// type may hide one of ours: empty, or a config media type rather than
// the manifest's artifactType.
func vagueArtifactType(at string) bool {
	switch at {
	case "", "application/vnd.oci.empty.v1+json", "application/vnd.oci.image.config.v1+json":
		return true
	}
	return false
}

// manifestArtifactType reads the artifact type of a referrer manifest:
// its artifactType, or else its config's media type.
func manifestArtifactType(raw []byte) (string, error) {
	mf, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return "", err
	}
	if mf.ArtifactType != "" {
		return mf.ArtifactType, nil
	}
	return string(mf.Config.MediaType), nil
}

// getManifest returns desc, or fetches ref's manifest when it is nil.
func getManifest(ctx context.Context, p *remote.Puller, ref name.Reference, desc *remote.Descriptor) (*remote.Descriptor, error) {
	if desc != nil {
		return desc, nil
	}
	return p.Get(ctx, ref)
}

func notFound(err error) bool {
	re := registry.ErrorOf(err)
	return re != nil && re.Kind == policy.ErrNotFound
}

// artifacts reads a cosign signature or attestation manifest: one layer
// per signature, its payload in the blob, the signature, certificate,
// chain and Rekor bundle in annotations.
func artifacts(ctx context.Context, p *remote.Puller, ref name.Reference, desc *remote.Descriptor, source string, att bool) ([]artifact, error) {
	desc, err := getManifest(ctx, p, ref, desc)
	if err != nil {
		return nil, err
	}
	img, err := desc.Image()
	if err != nil {
		return nil, err
	}
	mf, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	var out []artifact
	for i, l := range mf.Layers {
		if i >= maxArtifacts {
			break
		}
		a := artifact{source: source}
		if l.Size > maxPayloadBytes {
			a.err = fmt.Sprintf("payload of %d bytes, more than %d", l.Size, maxPayloadBytes)
			out = append(out, a)
			continue
		}
		payload, err := readBlob(ctx, p, ref.Context().Digest(l.Digest.String()))
		if err != nil {
			return nil, err
		}
		ann := l.Annotations
		var opts []static.Option
		if c := ann[annCertificate]; c != "" {
			opts = append(opts, static.WithCertChain([]byte(c), []byte(ann[annChain])))
		}
		if b := ann[annBundle]; b != "" {
			var rb bundle.RekorBundle
			if err := jsonUnmarshal([]byte(b), &rb); err != nil {
				a.err = "unreadable Rekor bundle: " + err.Error()
				out = append(out, a)
				continue
			}
			opts = append(opts, static.WithBundle(&rb))
		}
		if att {
			a.sig, err = static.NewAttestation(payload, opts...)
		} else {
			a.sig, err = static.NewSignature(payload, ann[annSignature], opts...)
		}
		if err != nil {
			a.err = err.Error()
		}
		out = append(out, a)
	}
	return out, nil
}

func readBlob(ctx context.Context, p *remote.Puller, d name.Digest) ([]byte, error) {
	l, err := p.Layer(ctx, d)
	if err != nil {
		return nil, err
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxPayloadBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxPayloadBytes {
		return nil, fmt.Errorf("blob %s is larger than %d bytes", d.DigestStr(), maxPayloadBytes)
	}
	return b, nil
}

// trust is a policy's trust settings made ready: key verifiers and the
// trusted root, read once per settings.
type trust struct {
	fingerprint string
	keys        []keyVerifier
	keyless     []cosign.Identity
	material    root.TrustedMaterial
	ignoreTlog  bool
	bundle      bundleVerifiers

	// roots are the trusted-root instances of the trusted-root file,
	// apart; material is all of them.
	roots []*root.TrustedRoot
	// keylessIDs are keyless as sigstore-go identities; github the
	// GitHub signers.
	keylessIDs []verify.CertificateIdentity
	github     []policy.GitHubMatcher
	// notation verifies Notary Project signatures; nil without
	// signatures.notation.
	notation *notationTrust
}

type keyVerifier struct {
	fingerprint string
	verifier    signature.Verifier
}

func (v *Verifier) trust(ts policy.TrustSettings) (*trust, error) {
	if t, ok := v.trusts.Get(ts.Fingerprint); ok {
		return t.(*trust), nil
	}
	t, err := loadTrust(ts)
	if err != nil {
		return nil, err
	}
	v.trusts.Add(ts.Fingerprint, t, v.matTTL)
	return t, nil
}

// CheckTrust reads the key files and the trusted root of ts and reports
// what makes them unusable; serve and check call it for every policy
// before using it, so that a bad path is a clear error rather than an
// untrusted-signer finding at admission.
func CheckTrust(ts policy.TrustSettings) error {
	_, err := loadTrust(ts)
	return err
}

// loadTrust reads the key files and the trusted root of ts.
func loadTrust(ts policy.TrustSettings) (*trust, error) {
	t := &trust{fingerprint: ts.Fingerprint, ignoreTlog: ts.IgnoreTlog}
	for _, k := range ts.Keys {
		pemKey := k.PEM
		if k.Path != "" {
			b, err := os.ReadFile(k.Path)
			if err != nil {
				return nil, fmt.Errorf("signatures.keys: %v", err)
			}
			pemKey = b
		}
		pub, err := cryptoutils.UnmarshalPEMToPublicKey(pemKey)
		if err != nil {
			return nil, fmt.Errorf("signatures.keys %s: %v", k.Path, err)
		}
		sv, err := signature.LoadVerifier(pub, crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("signatures.keys %s: %v", k.Path, err)
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return nil, err
		}
		t.keys = append(t.keys, keyVerifier{fingerprint: policy.DERFingerprint(der), verifier: sv})
	}
	for _, id := range ts.Keyless {
		t.keyless = append(t.keyless, cosign.Identity{Issuer: id.Issuer, IssuerRegExp: id.IssuerRegExp, Subject: id.Subject, SubjectRegExp: id.SubjectRegExp})
	}
	var err error
	if t.keylessIDs, err = keylessIdentities(ts.Keyless); err != nil {
		return nil, err
	}
	t.github = ts.GitHub
	if ts.TrustedRoot != "" {
		b, err := os.ReadFile(ts.TrustedRoot)
		if err != nil {
			return nil, fmt.Errorf("signatures.trustedRoot: %v", err)
		}
		if t.roots, err = ParseTrustedRoots(b); err != nil {
			return nil, fmt.Errorf("signatures.trustedRoot %s: %v", ts.TrustedRoot, err)
		}
		if len(t.roots) == 1 {
			t.material = t.roots[0]
		} else {
			coll := make(root.TrustedMaterialCollection, len(t.roots))
			for i, r := range t.roots {
				coll[i] = r
			}
			t.material = coll
		}
	}
	if ts.Notation != nil {
		if t.notation, err = loadNotation(ts.Notation); err != nil {
			return nil, err
		}
	}
	if t.bundle, err = newBundleVerifiers(t); err != nil {
		return nil, err
	}
	return t, nil
}

// identity is who made a signature, and, once verified, when that is
// proven.
type identity struct {
	fingerprint, issuer, subject string
	github                       *policy.GitHubClaims
	signedAt                     time.Time
	signedAtSource               string
}

// verify checks one signature or attestation against every key and, when
// it carries a certificate, the keyless identities. It reports who signed
// it whether or not that signer is trusted.
func (t *trust) verify(ctx context.Context, s oci.Signature, h v1.Hash, att bool) (identity, error) {
	var id identity
	cert, err := s.Cert()
	if err != nil {
		return id, fmt.Errorf("unreadable certificate: %v", err)
	}
	var sum certificate.Summary
	if cert != nil {
		id.fingerprint = policy.DERFingerprint(cert.RawSubjectPublicKeyInfo)
		ce := cosign.CertExtensions{Cert: cert}
		id.issuer = ce.GetIssuer()
		id.subject = strings.Join(cryptoutils.GetSubjectAlternateNames(cert), ",")
		if s, err := certificate.SummarizeCertificate(cert); err == nil {
			sum, id.github = s, claimsOf(s)
		}
	}
	base := cosign.CheckOpts{
		TrustedMaterial: t.material,
		IgnoreTlog:      t.ignoreTlog,
		Offline:         true,
		IgnoreSCT:       t.material == nil || len(t.material.CTLogs()) == 0,
	}
	if !att {
		base.ClaimVerifier = cosign.SimpleClaimVerifier
	}
	check := func(co *cosign.CheckOpts) error {
		if att {
			_, err := cosign.VerifyBlobAttestation(ctx, s, h, co)
			return err
		}
		_, err := cosign.VerifyImageSignature(ctx, s, h, co)
		return err
	}
	var errs []string
	for _, k := range t.keys {
		co := base
		co.SigVerifier = k.verifier
		if err := check(&co); err == nil {
			id.fingerprint = k.fingerprint
			id.signedAt, id.signedAtSource = loggedAt(s, t.ignoreTlog)
			return id, nil
		} else {
			errs = append(errs, err.Error())
		}
	}
	if cert != nil && len(t.keyless) > 0 {
		co := base
		co.Identities = t.keyless
		if err := check(&co); err == nil {
			id.signedAt, id.signedAtSource = loggedAt(s, t.ignoreTlog)
			return id, nil
		} else {
			errs = append(errs, err.Error())
		}
	}
	if cert != nil && len(t.github) > 0 {
		// Any certificate the trusted root chains, then its claims.
		co := base
		co.Identities = []cosign.Identity{{IssuerRegExp: ".*", SubjectRegExp: ".*"}}
		err := check(&co)
		if err == nil {
			err = t.matchCertificate(certificate.Summary{CertificateIssuer: sum.CertificateIssuer, SubjectAlternativeName: sum.SubjectAlternativeName, Extensions: sum.Extensions})
		}
		if err == nil {
			id.signedAt, id.signedAtSource = loggedAt(s, t.ignoreTlog)
			return id, nil
		}
		errs = append(errs, err.Error())
	}
	if len(errs) == 0 {
		if cert != nil {
			return id, errors.New("signed by a certificate; no keyless identity is trusted")
		}
		return id, errors.New("signed with a key; no key is trusted")
	}
	if id.fingerprint == "" {
		if pk := publicKeyOf(s); pk != "" {
			id.fingerprint = pk
		}
	}
	return id, errors.New(dedupe(errs))
}

// loggedAt is the integrated time of a verified signature's Rekor entry
// (its SET verified offline, unless the policy ignores the log).
func loggedAt(s oci.Signature, ignoreTlog bool) (time.Time, string) {
	if ignoreTlog {
		return time.Time{}, ""
	}
	b, err := s.Bundle()
	if err != nil || b == nil || b.Payload.IntegratedTime <= 0 {
		return time.Time{}, ""
	}
	return time.Unix(b.Payload.IntegratedTime, 0).UTC(), policy.TimeSourceTransparencyLog
}

// publicKeyOf returns nothing: a bare cosign signature does not say which
// key made it. Kept as the one place to add key hints later.
func publicKeyOf(oci.Signature) string { return "" }

func dedupe(errs []string) string {
	var out []string
	for _, e := range errs {
		if !contains(out, e) {
			out = append(out, e)
		}
	}
	return strings.Join(out, "; ")
}
