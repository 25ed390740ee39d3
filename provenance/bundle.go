package provenance

import (
	"context"
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
func bundleArtifact(ctx context.Context, p *remote.Puller, ref name.Digest) (artifact, bool, error) {
	a := artifact{source: "bundle"}
	desc, err := p.Get(ctx, ref)
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

// bundleVerifiers are a policy's trust settings as sigstore-go verifiers,
// built once per settings in LoadTrust.
type bundleVerifiers struct {
	// keys verify bundles signed with a public key, one per trusted key:
	// the bundle's key hint is not trusted to pick the key.
	keys []bundleKeyVerifier
	// keyless verifies bundles signed with a Fulcio certificate, nil
	// without keyless identities.
	keyless    *verify.Verifier
	identities []verify.PolicyOption
}

type bundleKeyVerifier struct {
	fingerprint string
	verifier    *verify.Verifier
}

// newBundleVerifiers builds the verifiers. The transparency-log proof
// (an entry whose SET and inclusion proof verify with the trusted root's
// Rekor keys) is required unless ignoreTlog; a certificate must then be
// valid at the log's integrated time. With ignoreTlog a certificate needs
// an RFC 3161 timestamp from a timestamping authority of the trusted
// root. SCTs are required when the trusted root lists CT logs.
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
	if len(t.keyless) == 0 || t.material == nil {
		return bv, nil
	}
	opts := []verify.VerifierOption{verify.WithObserverTimestamps(1)}
	if !t.ignoreTlog {
		opts = append(opts, verify.WithTransparencyLog(1))
	}
	if len(t.material.CTLogs()) > 0 {
		opts = append(opts, verify.WithSignedCertificateTimestamps(1))
	}
	v, err := verify.NewVerifier(t.material, opts...)
	if err != nil {
		return bv, err
	}
	bv.keyless = v
	for i, id := range t.keyless {
		ci, err := verify.NewShortCertificateIdentity(id.Issuer, id.IssuerRegExp, id.Subject, id.SubjectRegExp)
		if err != nil {
			return bv, fmt.Errorf("signatures.keyless[%d]: %v", i, err)
		}
		bv.identities = append(bv.identities, verify.WithCertificateIdentity(ci))
	}
	return bv, nil
}

// verifyBundle verifies a bundle for the image digest h: its signature
// over the digest (a message signature) or over an in-toto statement
// naming the digest (DSSE), by a trusted key or keyless identity, with
// its transparency-log proof unless the policy ignores the log. It
// reports who signed it whether or not that signer is trusted.
func (t *trust) verifyBundle(raw []byte, h v1.Hash) (identity, error) {
	var id identity
	b, err := parseBundle(raw)
	if err != nil {
		return id, err
	}
	vc, err := b.VerificationContent()
	if err != nil {
		return id, fmt.Errorf("Sigstore bundle: %v", err)
	}
	digest, err := hex.DecodeString(h.Hex)
	if err != nil || h.Algorithm != "sha256" {
		return id, fmt.Errorf("digest %s is not sha256", h)
	}
	artifact := verify.WithArtifactDigest("sha256", digest)
	if cert := vc.Certificate(); cert != nil {
		id.fingerprint = policy.DERFingerprint(cert.RawSubjectPublicKeyInfo)
		if s, err := certificate.SummarizeCertificate(cert); err == nil {
			id.issuer, id.subject = s.Issuer, s.SubjectAlternativeName
		}
		if t.bundle.keyless == nil {
			return id, errors.New("signed by a certificate; no keyless identity is trusted")
		}
		if _, err := t.bundle.keyless.Verify(b, verify.NewPolicy(artifact, t.bundle.identities...)); err != nil {
			return id, err
		}
		return id, nil
	}
	if len(t.bundle.keys) == 0 {
		return id, errors.New("signed with a key; no key is trusted")
	}
	var errs []string
	for _, k := range t.bundle.keys {
		_, err := k.verifier.Verify(b, verify.NewPolicy(artifact, verify.WithKey()))
		if err == nil {
			id.fingerprint = k.fingerprint
			return id, nil
		}
		errs = append(errs, err.Error())
	}
	return id, errors.New(dedupe(errs))
}

// judgeBundleSignature is a signature fact of a bundle: a message
// signature over the digest, or cosign's signature statement.
func judgeBundleSignature(tr *trust, a artifact, h v1.Hash, platform string) policy.Signature {
	s := policy.Signature{On: h.String(), Platform: platform, Source: a.source}
	id, err := tr.verifyBundle(a.bundle, h)
	s.KeyFingerprint, s.Issuer, s.Subject = id.fingerprint, id.issuer, id.subject
	if err != nil {
		s.Error = err.Error()
	} else {
		s.Verified = true
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
	var id identity
	if st != nil && !contains(st.SubjectDigests, h.String()) {
		// Checked before the signature so the finding says what is wrong;
		// sigstore-go would also refuse it.
		id, _ = tr.verifyBundle(a.bundle, h)
	} else {
		id, verr = tr.verifyBundle(a.bundle, h)
	}
	return attestationFacts(at, st, perr, id, verr, h)
}

// attestationFacts fills an attestation fact from its statement and the
// outcome of verifying its signature: verified only when the signature
// verified, the statement parsed, is SLSA provenance, and names h.
func attestationFacts(at policy.Attestation, st *Statement, perr error, id identity, verr error, h v1.Hash) policy.Attestation {
	if st != nil {
		at.PredicateType, at.BuilderID, at.Sources, at.SubjectDigests, at.FinishedOn = st.PredicateType, st.BuilderID, st.Sources, st.SubjectDigests, st.FinishedOn
	}
	at.KeyFingerprint, at.Issuer, at.Subject = id.fingerprint, id.issuer, id.subject
	switch {
	case verr != nil:
		at.Error = verr.Error()
	case perr != nil:
		at.Error = perr.Error()
	case !st.IsSLSA():
		at.Error = fmt.Sprintf("predicate type %q is not SLSA provenance", st.PredicateType)
	case !contains(st.SubjectDigests, h.String()):
		at.Error = fmt.Sprintf("statement is about %s, not %s", strings.Join(st.SubjectDigests, ", "), h)
	default:
		at.Verified = true
	}
	return at
}
