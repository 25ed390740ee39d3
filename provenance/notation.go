package provenance

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/notaryproject/notation-core-go/revocation"
	corecrl "github.com/notaryproject/notation-core-go/revocation/crl"
	"github.com/notaryproject/notation-core-go/revocation/purpose"
	revresult "github.com/notaryproject/notation-core-go/revocation/result"
	"github.com/notaryproject/notation-core-go/signature"
	"github.com/notaryproject/notation-core-go/signature/cose"
	"github.com/notaryproject/notation-core-go/signature/jws"
	"github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/verifier"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	"github.com/notaryproject/notation-go/verifier/truststore"
	"github.com/notaryproject/tspclient-go"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"buildguard.dev/buildguard/policy"
)

// ArtifactTypeNotation is the artifact type of Notary Project signatures
// stored as OCI 1.1 referrers (and in the referrers tag schema).
const ArtifactTypeNotation = "application/vnd.cncf.notary.signature"

// Media types of Notary Project signature envelopes.
const (
	notationJWS  = jws.MediaTypeEnvelope  // application/jose+json
	notationCOSE = cose.MediaTypeEnvelope // application/cose
)

// maxCRLs bounds signatures.notation.revocation.crls.
const maxCRLs = 256

// notationLayer checks a Notary Project signature manifest as the
// Notary Project specification writes it: an image manifest whose
// subject is the signed artifact and whose one layer is the envelope
// (JWS or COSE). It returns the envelope's media type and descriptor,
// and the subject. It reads untrusted data and checks nothing
// cryptographic.
func notationLayer(mf *v1.Manifest) (string, v1.Descriptor, v1.Descriptor, error) {
	if mf == nil {
		return "", v1.Descriptor{}, v1.Descriptor{}, errors.New("no manifest")
	}
	if mf.Subject == nil {
		return "", v1.Descriptor{}, v1.Descriptor{}, errors.New("Notary Project signature manifest has no subject")
	}
	if len(mf.Layers) != 1 {
		return "", v1.Descriptor{}, v1.Descriptor{}, fmt.Errorf("Notary Project signature manifest has %d layers, want the one envelope", len(mf.Layers))
	}
	l := mf.Layers[0]
	switch string(l.MediaType) {
	case notationJWS, notationCOSE:
	default:
		return "", v1.Descriptor{}, v1.Descriptor{}, fmt.Errorf("Notary Project signature envelope of media type %q is neither %s nor %s", l.MediaType, notationJWS, notationCOSE)
	}
	if l.Size < 0 || l.Size > maxPayloadBytes {
		return "", v1.Descriptor{}, v1.Descriptor{}, fmt.Errorf("Notary Project signature envelope of %d bytes, more than %d", l.Size, maxPayloadBytes)
	}
	return string(l.MediaType), l, *mf.Subject, nil
}

func envelopeName(mediaType string) string {
	if mediaType == notationCOSE {
		return "cose"
	}
	return "jws"
}

// notationTrust is a policy's Notation settings made ready: the trust
// store read from its files, the trust policy document, and revocation
// validators that never use the network.
type notationTrust struct {
	verifier      notation.Verifier
	doc           *trustpolicy.Document
	stores        memTrustStore
	revocationOff bool
}

// memTrustStore is a Notation X.509 trust store held in memory, keyed by
// "TYPE:NAME".
type memTrustStore map[string][]*x509.Certificate

// GetCertificates implements truststore.X509TrustStore.
func (m memTrustStore) GetCertificates(_ context.Context, storeType truststore.Type, name string) ([]*x509.Certificate, error) {
	certs, ok := m[string(storeType)+":"+name]
	if !ok {
		return nil, truststore.TrustStoreError{Msg: fmt.Sprintf("the trust store %q of type %q does not exist", name, storeType)}
	}
	return certs, nil
}

// loadNotation reads the certificates and CRLs of n and builds an
// offline Notation verifier.
func loadNotation(n *policy.NotationTrust) (*notationTrust, error) {
	nt := &notationTrust{stores: memTrustStore{}, revocationOff: n.Revocation.Off}
	for i, st := range n.TrustStores {
		f := fmt.Sprintf("signatures.notation.trustStores[%d]", i)
		var certs []*x509.Certificate
		for j, c := range st.Certificates {
			cs, err := readCertificates(c)
			if err != nil {
				return nil, fmt.Errorf("%s.certificates[%d]: %v", f, j, err)
			}
			certs = append(certs, cs...)
		}
		if err := truststore.ValidateCertificates(certs); err != nil {
			return nil, fmt.Errorf("%s (%s): %v", f, st.Name, err)
		}
		if st.Type == policy.NotationStoreTSA {
			for _, c := range certs {
				if c.CheckSignatureFrom(c) != nil || string(c.RawSubject) != string(c.RawIssuer) {
					return nil, fmt.Errorf("%s (%s): certificate %q is not a root CA certificate; tsa stores hold roots", f, st.Name, c.Subject)
				}
			}
		}
		nt.stores[st.Type+":"+st.Name] = certs
	}
	doc := &trustpolicy.Document{Version: "1.0"}
	for _, tp := range n.TrustPolicies {
		sv := trustpolicy.SignatureVerification{VerificationLevel: tp.VerificationLevel, VerifyTimestamp: trustpolicy.TimestampOption(tp.VerifyTimestamp)}
		if n.Revocation.Off {
			sv.Override = map[trustpolicy.ValidationType]trustpolicy.ValidationAction{trustpolicy.TypeRevocation: trustpolicy.ActionSkip}
		}
		doc.TrustPolicies = append(doc.TrustPolicies, trustpolicy.TrustPolicy{Name: tp.Name, RegistryScopes: tp.RegistryScopes,
			SignatureVerification: sv, TrustStores: tp.TrustStores, TrustedIdentities: tp.TrustedIdentities})
	}
	if err := doc.Validate(); err != nil {
		return nil, fmt.Errorf("signatures.notation: %v", err)
	}
	nt.doc = doc
	var codeSigning, timestamping revocation.Validator = offValidator{}, offValidator{}
	if !n.Revocation.Off {
		if len(n.Revocation.CRLs) > maxCRLs {
			return nil, fmt.Errorf("signatures.notation.revocation.crls: more than %d", maxCRLs)
		}
		var crls []*x509.RevocationList
		for i, path := range n.Revocation.CRLs {
			crl, err := readCRL(path)
			if err != nil {
				return nil, fmt.Errorf("signatures.notation.revocation.crls[%d]: %v", i, err)
			}
			crls = append(crls, crl)
		}
		codeSigning = &crlValidator{crls: crls, purpose: purpose.CodeSigning}
		timestamping = &crlValidator{crls: crls, purpose: purpose.Timestamping}
	}
	v, err := verifier.NewWithOptions(doc, nt.stores, nil, verifier.VerifierOptions{
		RevocationCodeSigningValidator:  codeSigning,
		RevocationTimestampingValidator: timestamping,
	})
	if err != nil {
		return nil, fmt.Errorf("signatures.notation: %v", err)
	}
	nt.verifier = v
	return nt, nil
}

// readCertificates reads PEM certificates, inline or from a file (PEM or
// DER).
func readCertificates(entry string) ([]*x509.Certificate, error) {
	entry = strings.TrimSpace(entry)
	b := []byte(entry)
	if !strings.HasPrefix(entry, "-----BEGIN") {
		var err error
		if b, err = os.ReadFile(entry); err != nil {
			return nil, err
		}
	}
	var certs []*x509.Certificate
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		cs, err := x509.ParseCertificates(b)
		if err != nil || len(cs) == 0 {
			return nil, errors.New("no PEM or DER certificate in it")
		}
		certs = cs
	}
	return certs, nil
}

// readCRL reads a CRL file, PEM ("X509 CRL") or DER.
func readCRL(path string) (*x509.RevocationList, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		b = blk.Bytes
	}
	crl, err := x509.ParseRevocationList(b)
	if err != nil {
		return nil, fmt.Errorf("%s is not a CRL: %v", path, err)
	}
	return crl, nil
}

// crlValidator checks revocation against the policy's CRL files with
// notation-core-go's own checks (issuer signature, freshness, reason
// codes, invalidity dates): CRL distribution points are answered from
// the files, OCSP responders never.
type crlValidator struct {
	crls    []*x509.RevocationList
	purpose purpose.Purpose
}

// ValidateContext implements revocation.Validator.
func (v *crlValidator) ValidateContext(ctx context.Context, opts revocation.ValidateContextOptions) ([]*revresult.CertRevocationResult, error) {
	inner, err := revocation.NewWithOptions(revocation.Options{
		OCSPHTTPClient:   &http.Client{Transport: noNetwork{}},
		CRLFetcher:       chainCRLs{chain: opts.CertChain, crls: v.crls},
		CertChainPurpose: v.purpose,
	})
	if err != nil {
		return nil, err
	}
	return inner.ValidateContext(ctx, opts)
}

// chainCRLs answers a CRL distribution point of a certificate of chain
// with the CRL file its issuer (the next certificate) signed.
type chainCRLs struct {
	chain []*x509.Certificate
	crls  []*x509.RevocationList
}

// Fetch implements crl.Fetcher.
func (c chainCRLs) Fetch(_ context.Context, url string) (*corecrl.Bundle, error) {
	for i, cert := range c.chain[:max(len(c.chain)-1, 0)] {
		if !contains(cert.CRLDistributionPoints, url) {
			continue
		}
		issuer := c.chain[i+1]
		for _, crl := range c.crls {
			if string(crl.RawIssuer) == string(issuer.RawSubject) && crl.CheckSignatureFrom(issuer) == nil {
				return &corecrl.Bundle{BaseCRL: crl}, nil
			}
		}
		return nil, fmt.Errorf("no CRL of %q among signatures.notation.revocation.crls (buildguard fetches no CRL at admission)", issuer.Subject)
	}
	return nil, fmt.Errorf("CRL distribution point %s is no certificate's of the chain", url)
}

// noNetwork refuses every request: OCSP is never asked at admission.
type noNetwork struct{}

func (noNetwork) RoundTrip(r *http.Request) (*http.Response, error) {
	return nil, fmt.Errorf("buildguard asks no OCSP responder at admission (%s); give the issuer's CRL in signatures.notation.revocation.crls", r.URL.Host)
}

// offValidator answers every certificate as not checkable: revocation
// checking is off (signatures.notation.revocation.off), and Notation
// still asks about the timestamping chain.
type offValidator struct{}

// ValidateContext implements revocation.Validator.
func (offValidator) ValidateContext(_ context.Context, opts revocation.ValidateContextOptions) ([]*revresult.CertRevocationResult, error) {
	out := make([]*revresult.CertRevocationResult, len(opts.CertChain))
	for i := range out {
		out[i] = &revresult.CertRevocationResult{Result: revresult.ResultNonRevokable,
			ServerResults: []*revresult.ServerResult{{Result: revresult.ResultNonRevokable, RevocationMethod: revresult.RevocationMethodUnknown}}}
	}
	return out, nil
}

// notationOutcome is what verifying one Notary Project signature showed.
type notationOutcome struct {
	res      policy.NotationResult
	id       identity
	signedAt time.Time
	err      error
}

// verify verifies a Notary Project signature envelope of the artifact
// subject (its manifest descriptor, as the signature manifest names it)
// in repository repo ("registry/repository"). The trust policy is the one
// whose registry scope names repo.
func (n *notationTrust) verify(ctx context.Context, env []byte, mediaType string, subject v1.Descriptor, repo string) notationOutcome {
	o := notationOutcome{res: policy.NotationResult{Envelope: envelopeName(mediaType), Revocation: "crl"}}
	if n.revocationOff {
		o.res.Revocation = "off"
	}
	ref := repo + "@" + subject.Digest.String()
	tp, _ := n.doc.GetApplicableTrustPolicy(ref)
	if tp != nil {
		o.res.TrustPolicy, o.res.VerificationLevel = tp.Name, tp.SignatureVerification.VerificationLevel
	}
	desc := ocispec.Descriptor{MediaType: string(subject.MediaType), Digest: digestOf(subject.Digest), Size: subject.Size}
	out, err := n.verifier.Verify(ctx, desc, env, notation.VerifierVerifyOptions{ArtifactReference: ref, SignatureMediaType: mediaType})
	if out != nil && out.EnvelopeContent != nil {
		si := out.EnvelopeContent.SignerInfo
		if len(si.CertificateChain) > 0 {
			leaf := si.CertificateChain[0]
			o.id.fingerprint = policy.DERFingerprint(leaf.RawSubjectPublicKeyInfo)
			o.id.subject, o.id.issuer = leaf.Subject.String(), leaf.Issuer.String()
			o.res.Signer = leaf.Subject.String()
		}
	}
	if out != nil {
		for _, r := range out.VerificationResults {
			if r.Error != nil && r.Action == trustpolicy.ActionLog {
				o.res.Logged = append(o.res.Logged, string(r.Type)+": "+r.Error.Error())
			}
		}
	}
	if err != nil {
		o.err = err
		return o
	}
	o.signedAt = n.timestamp(out, tp)
	return o
}

// timestamp returns when a verified signature's RFC 3161
// countersignature proves it existed (the latest bound of the
// timestamp's accuracy), or zero. Notation verifies the countersignature
// against the tsa stores only when trust policy tp names one, and, with
// verifyTimestamp afterCertExpiry, only once the certificate expired;
// only a countersignature it verified is a proof.
func (n *notationTrust) timestamp(out *notation.VerificationOutcome, tp *trustpolicy.TrustPolicy) time.Time {
	if out.EnvelopeContent == nil || tp == nil {
		return time.Time{}
	}
	si := out.EnvelopeContent.SignerInfo
	if si.SignedAttributes.SigningScheme != signature.SigningSchemeX509 || len(si.UnsignedAttributes.TimestampSignature) == 0 {
		return time.Time{}
	}
	tsa := false
	for _, s := range tp.TrustStores {
		tsa = tsa || strings.HasPrefix(s, policy.NotationStoreTSA+":")
	}
	expired := false
	for _, c := range si.CertificateChain {
		expired = expired || time.Now().After(c.NotAfter)
	}
	if !tsa || (tp.SignatureVerification.VerifyTimestamp == trustpolicy.OptionAfterCertExpiry && !expired) {
		return time.Time{}
	}
	checked := false
	for _, r := range out.VerificationResults {
		if r.Type == trustpolicy.TypeAuthenticTimestamp {
			if r.Error != nil {
				return time.Time{}
			}
			checked = true
		}
	}
	if !checked {
		return time.Time{}
	}
	tok, err := tspclient.ParseSignedToken(si.UnsignedAttributes.TimestampSignature)
	if err != nil {
		return time.Time{}
	}
	info, err := tok.Info()
	if err != nil {
		return time.Time{}
	}
	ts, err := info.Validate(si.Signature)
	if err != nil {
		return time.Time{}
	}
	return ts.Value.Add(ts.Accuracy).UTC()
}

func digestOf(h v1.Hash) digest.Digest { return digest.Digest(h.String()) }
