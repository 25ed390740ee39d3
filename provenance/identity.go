package provenance

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"

	"buildguard.dev/buildguard/policy"
)

// instanceOf returns the trusted-root instance whose Fulcio CA issued
// cert, checked at the certificate's own issuance time (the proofs of
// when it was used are checked later, by the verifier); nil when none
// does.
func (t *trust) instanceOf(cert *x509.Certificate) *root.TrustedRoot {
	at := cert.NotBefore.Add(1)
	for _, r := range t.roots {
		for _, ca := range r.FulcioCertificateAuthorities() {
			if _, err := ca.Verify(cert, at); err == nil {
				return r
			}
		}
	}
	return nil
}

// claimsOf returns the GitHub Actions claims of a Fulcio certificate, or
// nil when it has none.
func claimsOf(s certificate.Summary) *policy.GitHubClaims {
	e := s.Extensions
	if e.SourceRepositoryURI == "" && e.RunnerEnvironment == "" && e.BuildSignerURI == "" {
		return nil
	}
	return &policy.GitHubClaims{
		SourceRepository:  e.SourceRepositoryURI,
		SourceRef:         e.SourceRepositoryRef,
		SignerWorkflow:    s.SubjectAlternativeName,
		RunnerEnvironment: e.RunnerEnvironment,
	}
}

// matchCertificate matches a verified certificate against the keyless
// identities (issuer and subject) and the GitHub identities (the claims
// of its extensions) the policy trusts. The error says how it differs
// from each.
func (t *trust) matchCertificate(s certificate.Summary) error {
	var errs []string
	for _, id := range t.keylessIDs {
		err := id.Verify(s)
		if err == nil {
			return nil
		}
		errs = append(errs, err.Error())
	}
	var claims policy.GitHubClaims
	if c := claimsOf(s); c != nil {
		claims = *c
	}
	for _, g := range t.github {
		err := g.Match(s.Extensions.Issuer, s.SubjectAlternativeName, claims)
		if err == nil {
			return nil
		}
		errs = append(errs, g.Identity.String()+": "+err.Error())
	}
	if len(errs) == 0 {
		return errors.New("no keyless or GitHub identity is trusted")
	}
	return fmt.Errorf("certificate of %s from %q matches no trusted identity: %s", s.SubjectAlternativeName, s.Extensions.Issuer, strings.Join(errs, "; "))
}

// keylessIdentities turns signatures.keyless into sigstore-go
// identities.
func keylessIdentities(ids []policy.KeylessIdentity) ([]verify.CertificateIdentity, error) {
	var out []verify.CertificateIdentity
	for i, id := range ids {
		ci, err := verify.NewShortCertificateIdentity(id.Issuer, id.IssuerRegExp, id.Subject, id.SubjectRegExp)
		if err != nil {
			return nil, fmt.Errorf("signatures.keyless[%d]: %v", i, err)
		}
		out = append(out, ci)
	}
	return out, nil
}
