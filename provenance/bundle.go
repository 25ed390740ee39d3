package provenance

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"

	"buildguard.dev/buildguard/policy"
)

// bundleMediaTypePrefix starts the media type of every Sigstore bundle
// version ("application/vnd.dev.sigstore.bundle.v0.3+json").
const bundleMediaTypePrefix = "application/vnd.dev.sigstore.bundle"

// cosignSignPredicateType is the predicate of the in-toto statement that
// `cosign sign --new-bundle-format` wraps in a bundle: a signature of
// the image, not provenance.
const cosignSignPredicateType = "https://sigstore.dev/cosign/sign/v1"

// bundleArtifact reads a Sigstore bundle stored as an OCI 1.1 referrer:
// a manifest with one layer holding the bundle's JSON, as
// actions/attest-build-provenance and cosign --new-bundle-format write
// it. It reports whether the bundle is an attestation (a DSSE envelope
// holding an in-toto statement other than cosign's signature predicate)
// or a signature (a message signature, or cosign's predicate). The
// classification reads unverified content; verification comes later.
func bundleArtifact(ctx context.Context, p *remote.Puller, ref name.Digest, desc *remote.Descriptor) (artifact, bool, error) {
	a := artifact{source: "bundle"}
	desc, err := getManifest(ctx, p, ref, desc)
	if err != nil {
		return a, false, err
	}
	img, err := desc.Image()
	if err != nil {
		return a, false, err
	}
	mf, err := img.Manifest()
	if err != nil {
		return a, false, err
	}
	if len(mf.Layers) != 1 || !strings.HasPrefix(string(mf.Layers[0].MediaType), bundleMediaTypePrefix) {
		a.err = fmt.Sprintf("Sigstore bundle referrer %s: want one layer of type %s…, have %d layer(s)", ref.DigestStr(), bundleMediaTypePrefix, len(mf.Layers))
		return a, false, nil
	}
	if l := mf.Layers[0]; l.Size > maxPayloadBytes {
		a.err = fmt.Sprintf("Sigstore bundle of %d bytes, more than %d", l.Size, maxPayloadBytes)
		return a, false, nil
	}
	raw, err := readBlob(ctx, p, ref.Context().Digest(mf.Layers[0].Digest.String()))
	if err != nil {
		return a, false, err
	}
	b, err := parseBundle(raw)
	if err != nil {
		a.err = err.Error()
		return a, false, nil
	}
	a.bundle = raw
	env := b.GetDsseEnvelope()
	if env == nil {
		return a, false, nil
	}
	st, err := ParseStatement(env.GetPayload())
	return a, err != nil || st.PredicateType != cosignSignPredicateType, nil
}

// parseBundle decodes and validates a bundle. It is called for every
// verification rather than sharing one decoded bundle: sigstore-go's
// Bundle caches state as it is read, and cached material is verified
// concurrently under several policies.
func parseBundle(raw []byte) (*sgbundle.Bundle, error) {
	var b sgbundle.Bundle
	if err := b.UnmarshalJSON(raw); err != nil {
		return nil, fmt.Errorf("unreadable Sigstore bundle: %v", err)
	}
	return &b, nil
}

// bundleVerifiers are a policy's key trust settings as sigstore-go
// verifiers, built once per settings in loadTrust. Certificate-signed
// bundles get a verifier per bundle (verifyCertBundle): which
// transparency-log and timestamp proofs are required depends on the
// trusted-root instance that issued the certificate and on what the
// bundle holds.
type bundleVerifiers struct {
	// keys verify bundles signed with a public key, one per trusted key:
	// the bundle's key hint is not trusted to pick the key.
	keys []bundleKeyVerifier
}

type bundleKeyVerifier struct {
	fingerprint string
	verifier    *verify.Verifier
}

// newBundleVerifiers builds the key verifiers. The transparency-log proof
// (an entry whose SET and inclusion proof verify with the trusted root's
// Rekor keys) is required unless ignoreTlog.
func newBundleVerifiers(t *trust) (bundleVerifiers, error) {
	var bv bundleVerifiers
	for _, k := range t.keys {
		tm := root.TrustedMaterialCollection{root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) {
			return root.NewExpiringKey(k.verifier, time.Time{}, time.Time{}), nil
		})}
		opts := []verify.VerifierOption{verify.WithNoObserverTimestamps()}
		if !t.ignoreTlog {
			if t.material == nil {
				return bv, errors.New("signatures.trustedRoot: needed to verify the transparency-log proof of bundles")
			}
			tm = append(tm, t.material)
			opts = []verify.VerifierOption{verify.WithTransparencyLog(1), verify.WithIntegratedTimestamps(1)}
		}
		v, err := verify.NewVerifier(tm, opts...)
		if err != nil {
			return bv, err
		}
		bv.keys = append(bv.keys, bundleKeyVerifier{fingerprint: k.fingerprint, verifier: v})
	}
	return bv, nil
}

// bundleResult is who signed a bundle and when that is proven.
type bundleResult struct {
	id       identity
	github   *policy.GitHubClaims
	signedAt time.Time
	source   string // policy.TimeSourceTransparencyLog or TimeSourceTimestampAuthority
}

// verifyBundle verifies a bundle for the image digest h: its signature
// over the digest (a message signature) or over an in-toto statement
// naming the digest (DSSE), by a trusted key or keyless identity, with
// the proofs verifyCertBundle and the key verifiers require. It reports
// who signed it whether or not that signer is trusted.
func (t *trust) verifyBundle(raw []byte, h v1.Hash) (bundleResult, error) {
	var r bundleResult
	b, err := parseBundle(raw)
	if err != nil {
		return r, err
	}
	vc, err := b.VerificationContent()
	if err != nil {
		return r, fmt.Errorf("Sigstore bundle: %v", err)
	}
	digest, err := hex.DecodeString(h.Hex)
	if err != nil || h.Algorithm != "sha256" {
		return r, fmt.Errorf("digest %s is not sha256", h)
	}
	artifact := verify.WithArtifactDigest("sha256", digest)
	if cert := vc.Certificate(); cert != nil {
		return t.verifyCertBundle(b, cert, artifact)
	}
	if len(t.bundle.keys) == 0 {
		return r, errors.New("signed with a key; no key is trusted")
	}
	var errs []string
	for _, k := range t.bundle.keys {
		res, err := k.verifier.Verify(b, verify.NewPolicy(artifact, verify.WithKey()))
		if err == nil {
			r.id.fingerprint = k.fingerprint
			r.signedAt, r.source = provenTime(res)
			return r, nil
		}
		errs = append(errs, err.Error())
	}
	return r, errors.New(dedupe(errs))
}

// verifyCertBundle verifies a bundle signed with a Fulcio certificate
// against the trusted-root instance whose CA issued it (gh attestation
// trusted-root writes several: the public-good Sigstore and GitHub's
// own). The proofs it requires:
//   - a transparency-log entry, when the instance has transparency logs,
//     unless ignoreTlog: its SET and inclusion proof verify with the
//     instance's Rekor keys, and the certificate is valid at its
//     integrated time;
//   - every RFC 3161 timestamp the bundle holds, from a timestamping
//     authority of the instance, with the certificate valid at its time:
//     GitHub's instance has no transparency log and timestamps instead
//     (private repositories), and a bundle with both is checked on both;
//   - at least one of the two;
//   - SCTs, when the instance lists CT logs.
//
// The signer is then matched against signatures.keyless and
// signatures.github.
func (t *trust) verifyCertBundle(b *sgbundle.Bundle, cert *x509.Certificate, artifact verify.ArtifactPolicyOption) (bundleResult, error) {
	var r bundleResult
	r.id.fingerprint = policy.DERFingerprint(cert.RawSubjectPublicKeyInfo)
	sum, err := certificate.SummarizeCertificate(cert)
	if err == nil {
		r.id.issuer, r.id.subject = sum.Issuer, sum.SubjectAlternativeName
		r.github = claimsOf(sum)
	}
	if len(t.keyless) == 0 && len(t.github) == 0 {
		return r, errors.New("signed by a certificate; no keyless or GitHub identity is trusted")
	}
	if len(t.roots) == 0 {
		return r, errors.New("signed by a certificate; no trusted root to verify it with")
	}
	inst := t.instanceOf(cert)
	if inst == nil {
		return r, fmt.Errorf("certificate issued by %q chains to no Fulcio CA of the trusted root", cert.Issuer.String())
	}
	entries, err := b.TlogEntries()
	if err != nil {
		return r, fmt.Errorf("Sigstore bundle: %v", err)
	}
	stamps, err := b.Timestamps()
	if err != nil {
		return r, fmt.Errorf("Sigstore bundle: %v", err)
	}
	requireTlog := len(inst.RekorLogs()) > 0 && !t.ignoreTlog
	var opts []verify.VerifierOption
	switch {
	case requireTlog && len(entries) == 0:
		return r, errors.New("no transparency-log entry, and the trusted root that issued the certificate has transparency logs (ignoreTlog skips them)")
	case requireTlog:
		opts = append(opts, verify.WithTransparencyLog(1), verify.WithIntegratedTimestamps(1))
	case len(stamps) == 0 && len(inst.RekorLogs()) == 0:
		return r, errors.New("no RFC 3161 timestamp, and the trusted root that issued the certificate has no transparency log: nothing proves when it was signed")
	case len(stamps) == 0:
		return r, errors.New("no RFC 3161 timestamp, and ignoreTlog: nothing proves when it was signed")
	}
	if len(stamps) > 0 {
		opts = append(opts, verify.WithSignedTimestamps(len(stamps)))
	}
	if len(inst.CTLogs()) > 0 {
		opts = append(opts, verify.WithSignedCertificateTimestamps(1))
	}
	v, err := verify.NewVerifier(inst, opts...)
	if err != nil {
		return r, err
	}
	res, err := v.Verify(b, verify.NewPolicy(artifact, verify.WithoutIdentitiesUnsafe()))
	if err != nil {
		return r, err
	}
	if err := t.matchCertificate(sum); err != nil {
		return r, err
	}
	r.signedAt, r.source = provenTime(res)
	return r, nil
}

// provenTime is the earliest verified timestamp of a verification: a
// transparency log's integrated time or an RFC 3161 timestamp.
func provenTime(res *verify.VerificationResult) (time.Time, string) {
	var at time.Time
	var src string
	for _, ts := range res.VerifiedTimestamps {
		var s string
		switch ts.Type {
		case "Tlog":
			s = policy.TimeSourceTransparencyLog
		case "TimestampAuthority":
			s = policy.TimeSourceTimestampAuthority
		default:
			continue
		}
		if at.IsZero() || ts.Timestamp.Before(at) {
			at, src = ts.Timestamp.UTC(), s
		}
	}
	return at, src
}

// judgeBundleSignature is a signature fact of a bundle: a message
// signature over the digest, or cosign's signature statement.
func judgeBundleSignature(tr *trust, a artifact, h v1.Hash, platform string) policy.Signature {
	s := policy.Signature{On: h.String(), Platform: platform, Source: a.source, Type: "cosign"}
	r, err := tr.verifyBundle(a.bundle, h)
	s.KeyFingerprint, s.Issuer, s.Subject, s.GitHub = r.id.fingerprint, r.id.issuer, r.id.subject, r.github
	if err != nil {
		s.Error = err.Error()
	} else {
		s.Verified, s.SignedAt, s.SignedAtSource = true, r.signedAt, r.source
	}
	return s
}

// judgeBundleAttestation is an attestation fact of a DSSE bundle, read
// and judged as cosign's attestations are.
func judgeBundleAttestation(tr *trust, a artifact, h v1.Hash) policy.Attestation {
	at := policy.Attestation{Source: a.source}
	b, err := parseBundle(a.bundle)
	if err != nil {
		at.Error = err.Error()
		return at
	}
	env := b.GetDsseEnvelope()
	if env == nil {
		at.Error = "Sigstore bundle holds no DSSE envelope"
		return at
	}
	var st *Statement
	var perr error
	if env.GetPayloadType() != inTotoPayloadType {
		perr = fmt.Errorf("DSSE payload type %q is not %s", env.GetPayloadType(), inTotoPayloadType)
	} else {
		st, perr = ParseStatement(env.GetPayload())
	}
	var verr error
	var r bundleResult
	if st != nil && !contains(st.SubjectDigests, h.String()) {
		// Checked before the signature so the finding says what is wrong;
		// sigstore-go would also refuse it.
		r, _ = tr.verifyBundle(a.bundle, h)
	} else {
		r, verr = tr.verifyBundle(a.bundle, h)
	}
	at.GitHub = r.github
	if verr == nil {
		at.SignedAt, at.SignedAtSource = r.signedAt, r.source
	}
	return attestationFacts(at, st, perr, r.id, verr, h)
}

// attestationFacts fills an attestation fact from its statement and the
// outcome of verifying its signature: verified only when the signature
// verified, the statement parsed, is SLSA provenance, and names h.
func attestationFacts(at policy.Attestation, st *Statement, perr error, id identity, verr error, h v1.Hash) policy.Attestation {
	if st != nil {
		at.PredicateType, at.BuilderID, at.Sources, at.SubjectDigests, at.FinishedOn = st.PredicateType, st.BuilderID, st.Sources, st.SubjectDigests, st.FinishedOn
		at.VSA = st.VSA
	}
	at.KeyFingerprint, at.Issuer, at.Subject = id.fingerprint, id.issuer, id.subject
	switch {
	case verr != nil:
		at.Error = verr.Error()
	case perr != nil:
		at.Error = perr.Error()
	case !st.IsSLSA() && st.VSA == nil:
		at.Error = fmt.Sprintf("predicate type %q is neither SLSA provenance nor a verification summary", st.PredicateType)
	case !contains(st.SubjectDigests, h.String()):
		at.Error = fmt.Sprintf("statement is about %s, not %s", strings.Join(st.SubjectDigests, ", "), h)
	default:
		at.Verified = true
	}
	return at
}
