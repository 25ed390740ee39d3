package policy

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"hash"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// GitHubIssuer is the OIDC issuer of GitHub Actions tokens, the default
// issuer of a GitHubIdentity.
const GitHubIssuer = "https://token.actions.githubusercontent.com"

// GitHubIdentity matches the signer of a GitHub artifact attestation (or
// of any Fulcio-certified signature made in GitHub Actions) the way `gh
// attestation verify` does: by the claims Fulcio writes into the
// certificate's extensions, not by a regular expression over its subject
// alone. Repository or Owner is required; every other field narrows.
type GitHubIdentity struct {
	// Repository is the source repository the workflow ran for,
	// "owner/name" (gh's --repo), matched case-insensitively against the
	// certificate's source repository.
	Repository string `json:"repository,omitempty" yaml:"repository,omitempty"`
	// Owner is the source repository's owner (gh's --owner).
	Owner string `json:"owner,omitempty" yaml:"owner,omitempty"`
	// SignerWorkflow is the workflow that signed, "owner/repo/path" with
	// or without the host ("acme/shared/.github/workflows/build.yml",
	// gh's --signer-workflow): a reusable workflow may sign for another
	// repository. The default is any workflow of Repository (or of a
	// repository of Owner).
	SignerWorkflow string `json:"signerWorkflow,omitempty" yaml:"signerWorkflow,omitempty"`
	// SignerRepository is the repository of the signing workflow,
	// "owner/name" (gh's --signer-repo). Set it or SignerWorkflow.
	SignerRepository string `json:"signerRepository,omitempty" yaml:"signerRepository,omitempty"`
	// SourceRef is the git ref the workflow ran on ("refs/heads/main",
	// gh's --source-ref); a glob with the syntax of registries.allow
	// ("refs/tags/v*"). The default is any ref.
	SourceRef string `json:"sourceRef,omitempty" yaml:"sourceRef,omitempty"`
	// DenySelfHostedRunners rejects certificates issued to jobs that did
	// not run on GitHub-hosted runners (gh's --deny-self-hosted-runners).
	// The default is false.
	DenySelfHostedRunners bool `json:"denySelfHostedRunners,omitempty" yaml:"denySelfHostedRunners,omitempty"`
	// Issuer is the certificate's OIDC issuer. The default is
	// https://token.actions.githubusercontent.com.
	Issuer string `json:"issuer,omitempty" yaml:"issuer,omitempty"`
	// Hostname is the GitHub host ("acme.ghe.com" for GitHub Enterprise
	// Cloud with data residency). The default is github.com.
	Hostname string `json:"hostname,omitempty" yaml:"hostname,omitempty"`
}

func (g GitHubIdentity) String() string {
	s := "github "
	if g.Repository != "" {
		s += "repository " + g.Repository
	} else {
		s += "owner " + g.Owner
	}
	if g.SignerWorkflow != "" {
		s += " signed by workflow " + g.SignerWorkflow
	}
	if g.SignerRepository != "" {
		s += " signed by a workflow of " + g.SignerRepository
	}
	if g.SourceRef != "" {
		s += " on " + g.SourceRef
	}
	if g.DenySelfHostedRunners {
		s += " on GitHub-hosted runners"
	}
	return s
}

// GitHubMatcher is a compiled GitHubIdentity. Verifiers match a
// certificate's claims with it after its chain and timestamps verified.
type GitHubMatcher struct {
	Identity GitHubIdentity
	issuer   string
	host     string
	san      *regexp.Regexp
	ref      *glob
}

var (
	ghRepoRE  = regexp.MustCompile(`^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$`)
	ghOwnerRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
	ghHostRE  = regexp.MustCompile(`^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$`)
)

func compileGitHubIdentity(field string, g GitHubIdentity) (GitHubMatcher, error) {
	m := GitHubMatcher{Identity: g, issuer: g.Issuer, host: strings.ToLower(g.Hostname)}
	if m.issuer == "" {
		m.issuer = GitHubIssuer
	}
	if m.host == "" {
		m.host = "github.com"
	}
	if !ghHostRE.MatchString(m.host) {
		return m, &FieldError{Field: field + ".hostname", Msg: fmt.Sprintf("%q is not a host name", g.Hostname)}
	}
	switch {
	case (g.Repository == "") == (g.Owner == ""):
		return m, &FieldError{Field: field, Msg: "set exactly one of repository (owner/name) and owner"}
	case g.Repository != "" && !ghRepoRE.MatchString(g.Repository):
		return m, &FieldError{Field: field + ".repository", Msg: fmt.Sprintf("%q is not owner/name", g.Repository)}
	case g.Owner != "" && !ghOwnerRE.MatchString(g.Owner):
		return m, &FieldError{Field: field + ".owner", Msg: fmt.Sprintf("%q is not a GitHub owner", g.Owner)}
	case g.SignerWorkflow != "" && g.SignerRepository != "":
		return m, &FieldError{Field: field, Msg: "set at most one of signerWorkflow and signerRepository"}
	case g.SignerRepository != "" && !ghRepoRE.MatchString(g.SignerRepository):
		return m, &FieldError{Field: field + ".signerRepository", Msg: fmt.Sprintf("%q is not owner/name", g.SignerRepository)}
	}
	// The certificate's subject is the signing workflow's URL with its
	// ref: https://github.com/OWNER/REPO/.github/workflows/F.yml@REF.
	prefix := "https://" + m.host + "/"
	switch {
	case g.SignerWorkflow != "":
		wf := strings.TrimPrefix(strings.TrimPrefix(g.SignerWorkflow, "https://"), m.host+"/")
		if strings.Count(wf, "/") < 3 || strings.ContainsAny(wf, "@ \n") {
			return m, &FieldError{Field: field + ".signerWorkflow", Msg: fmt.Sprintf("%q is not owner/repo/path/to/workflow.yml", g.SignerWorkflow)}
		}
		prefix += wf + "@"
	case g.SignerRepository != "":
		prefix += g.SignerRepository + "/"
	case g.Repository != "":
		prefix += g.Repository + "/"
	default:
		prefix += g.Owner + "/"
	}
	m.san = regexp.MustCompile("(?i)^" + regexp.QuoteMeta(prefix))
	if g.SourceRef != "" {
		if !strings.HasPrefix(g.SourceRef, "refs/") {
			return m, &FieldError{Field: field + ".sourceRef", Msg: fmt.Sprintf("%q is not a git ref (refs/heads/main, refs/tags/v*)", g.SourceRef)}
		}
		gl, err := compileGlob(g.SourceRef)
		if err != nil {
			return m, &FieldError{Field: field + ".sourceRef", Msg: err.Error()}
		}
		m.ref = &gl
	}
	return m, nil
}

// Match reports whether a certificate issued by issuer, with subject
// (SAN) san and GitHub claims c, is this identity's; the error says which
// claim differs.
func (m GitHubMatcher) Match(issuer, san string, c GitHubClaims) error {
	if issuer != m.issuer {
		return fmt.Errorf("issuer %q is not %s", issuer, m.issuer)
	}
	if !m.san.MatchString(san) {
		return fmt.Errorf("signed by %q, not %s", san, strings.TrimPrefix(m.san.String(), "(?i)^"))
	}
	base := "https://" + m.host + "/"
	if m.Identity.Repository != "" && !strings.EqualFold(c.SourceRepository, base+m.Identity.Repository) {
		return fmt.Errorf("source repository %q is not %s%s", c.SourceRepository, base, m.Identity.Repository)
	}
	if m.Identity.Owner != "" && !strings.HasPrefix(strings.ToLower(c.SourceRepository), strings.ToLower(base+m.Identity.Owner+"/")) {
		return fmt.Errorf("source repository %q is not owned by %s", c.SourceRepository, m.Identity.Owner)
	}
	if m.ref != nil && !m.ref.match(c.SourceRef) {
		return fmt.Errorf("source ref %q does not match %s", c.SourceRef, m.Identity.SourceRef)
	}
	if m.Identity.DenySelfHostedRunners && c.RunnerEnvironment != "github-hosted" {
		return fmt.Errorf("ran on a %q runner, not github-hosted", c.RunnerEnvironment)
	}
	return nil
}

// NotationTrust configures the verification of Notary Project
// (Notation) signatures, offline, the way Notation's trust store and
// trustpolicy.json do, inside the policy. Nothing is fetched at
// admission: certificates and CRLs are files or inline PEM.
type NotationTrust struct {
	// TrustStores are named sets of X.509 certificates.
	TrustStores []NotationTrustStore `json:"trustStores,omitempty" yaml:"trustStores,omitempty"`
	// TrustPolicies say which trust stores and identities verify the
	// signatures of which repositories. At least one is required.
	TrustPolicies []NotationTrustPolicy `json:"trustPolicies,omitempty" yaml:"trustPolicies,omitempty"`
	// Revocation says how certificate revocation is checked: against CRL
	// files, or not at all. One of the two is required.
	Revocation NotationRevocation `json:"revocation,omitempty" yaml:"revocation,omitempty"`
}

// NotationTrustStore is a named trust store.
type NotationTrustStore struct {
	// Name is the store's name, referred to as "TYPE:NAME".
	Name string `json:"name" yaml:"name"`
	// Type is ca (certificate authorities that issue signing
	// certificates), signingAuthority, or tsa (RFC 3161 timestamping
	// authorities). The default is ca.
	Type string `json:"type,omitempty" yaml:"type,omitempty"`
	// Certificates are PEM certificates or paths of files holding them.
	Certificates []string `json:"certificates" yaml:"certificates"`
}

// NotationTrustPolicy is one statement of a Notation trust policy.
type NotationTrustPolicy struct {
	// Name identifies the statement in findings.
	Name string `json:"name" yaml:"name"`
	// RegistryScopes are the repositories the statement applies to
	// ("ghcr.io/acme/shop"), or "*" for every repository without a
	// statement of its own. A repository is in at most one statement.
	RegistryScopes []string `json:"registryScopes" yaml:"registryScopes"`
	// VerificationLevel is strict, permissive or audit (Notation's
	// levels). The default is strict. What a level only logs is a
	// warning finding; what it enforces decides whether the signature
	// counts.
	VerificationLevel string `json:"verificationLevel,omitempty" yaml:"verificationLevel,omitempty"`
	// TrustStores are "TYPE:NAME" references to trustStores.
	TrustStores []string `json:"trustStores" yaml:"trustStores"`
	// TrustedIdentities are "x509.subject: <distinguished name>" of
	// signing certificates, or "*" for any certificate the trust stores
	// chain.
	TrustedIdentities []string `json:"trustedIdentities" yaml:"trustedIdentities"`
	// VerifyTimestamp is always or afterCertExpiry: when an RFC 3161
	// countersignature is checked against the tsa stores. The default is
	// always.
	VerifyTimestamp string `json:"verifyTimestamp,omitempty" yaml:"verifyTimestamp,omitempty"`
}

// NotationRevocation says how revocation is checked. buildguard never
// contacts an OCSP responder or a CRL distribution point at admission.
type NotationRevocation struct {
	// CRLs are paths of CRL files (DER or PEM), read with the other
	// trust files. A certificate that names a CRL distribution point or
	// an OCSP responder needs a current CRL of its issuer among them.
	CRLs []string `json:"crls,omitempty" yaml:"crls,omitempty"`
	// Off turns revocation checking off. Findings say so.
	Off bool `json:"off,omitempty" yaml:"off,omitempty"`
}

// Notation trust store types.
const (
	NotationStoreCA               = "ca"
	NotationStoreSigningAuthority = "signingAuthority"
	NotationStoreTSA              = "tsa"
)

var notationNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

// compileNotation validates a Notation trust configuration and returns
// it with its registry scopes normalised (Docker Hub names in full), and
// feeds it to the trust fingerprint h.
func compileNotation(field string, n *NotationTrust, h hash.Hash) (*NotationTrust, error) {
	out := &NotationTrust{Revocation: n.Revocation}
	stores := map[string]bool{}
	for i, st := range n.TrustStores {
		f := fmt.Sprintf("%s.trustStores[%d]", field, i)
		if st.Type == "" {
			st.Type = NotationStoreCA
		}
		switch st.Type {
		case NotationStoreCA, NotationStoreSigningAuthority, NotationStoreTSA:
		default:
			return nil, &FieldError{Field: f + ".type", Msg: fmt.Sprintf("%q is not one of ca, signingAuthority, tsa", st.Type)}
		}
		if !notationNameRE.MatchString(st.Name) {
			return nil, &FieldError{Field: f + ".name", Msg: fmt.Sprintf("%q is not a store name (letters, digits, _ . -)", st.Name)}
		}
		ref := st.Type + ":" + st.Name
		if stores[ref] {
			return nil, &FieldError{Field: f + ".name", Msg: fmt.Sprintf("trust store %s is defined twice", ref)}
		}
		stores[ref] = true
		if len(st.Certificates) == 0 {
			return nil, &FieldError{Field: f + ".certificates", Msg: "required: PEM certificates or paths of files holding them"}
		}
		for j, c := range st.Certificates {
			if err := checkCertificateEntry(c); err != nil {
				return nil, &FieldError{Field: fmt.Sprintf("%s.certificates[%d]", f, j), Msg: err.Error()}
			}
			fmt.Fprintf(h, "notation-cert=%s\x00%s\x00", ref, strings.TrimSpace(c))
		}
		out.TrustStores = append(out.TrustStores, NotationTrustStore{Name: st.Name, Type: st.Type, Certificates: st.Certificates})
	}
	if len(n.TrustPolicies) == 0 {
		return nil, &FieldError{Field: field + ".trustPolicies", Msg: "required: at least one trust policy"}
	}
	names, scopes := map[string]bool{}, map[string]string{}
	for i, tp := range n.TrustPolicies {
		f := fmt.Sprintf("%s.trustPolicies[%d]", field, i)
		if strings.TrimSpace(tp.Name) == "" {
			return nil, &FieldError{Field: f + ".name", Msg: "required"}
		}
		if names[tp.Name] {
			return nil, &FieldError{Field: f + ".name", Msg: fmt.Sprintf("trust policy %q is defined twice", tp.Name)}
		}
		names[tp.Name] = true
		ctp := NotationTrustPolicy{Name: tp.Name, VerificationLevel: tp.VerificationLevel, VerifyTimestamp: tp.VerifyTimestamp,
			TrustStores: tp.TrustStores, TrustedIdentities: tp.TrustedIdentities}
		if ctp.VerificationLevel == "" {
			ctp.VerificationLevel = "strict"
		}
		switch ctp.VerificationLevel {
		case "strict", "permissive", "audit":
		case "skip":
			return nil, &FieldError{Field: f + ".verificationLevel", Msg: "skip would admit any signature; use strict, permissive or audit, or leave signatures.required off"}
		default:
			return nil, &FieldError{Field: f + ".verificationLevel", Msg: fmt.Sprintf("%q is not one of strict, permissive, audit", tp.VerificationLevel)}
		}
		if ctp.VerifyTimestamp == "" {
			ctp.VerifyTimestamp = "always"
		}
		if ctp.VerifyTimestamp != "always" && ctp.VerifyTimestamp != "afterCertExpiry" {
			return nil, &FieldError{Field: f + ".verifyTimestamp", Msg: fmt.Sprintf("%q is not one of always, afterCertExpiry", tp.VerifyTimestamp)}
		}
		if len(tp.RegistryScopes) == 0 {
			return nil, &FieldError{Field: f + ".registryScopes", Msg: "required: repositories (registry/repository) or \"*\""}
		}
		for j, sc := range tp.RegistryScopes {
			sf := fmt.Sprintf("%s.registryScopes[%d]", f, j)
			if sc == "*" {
				if len(tp.RegistryScopes) > 1 {
					return nil, &FieldError{Field: sf, Msg: "\"*\" cannot be combined with other scopes"}
				}
			} else {
				repo, err := name.NewRepository(sc)
				if err != nil {
					return nil, &FieldError{Field: sf, Msg: fmt.Sprintf("%q is not a repository (registry/repository, no tag, digest or wildcard)", sc)}
				}
				sc = repo.Name()
			}
			if other, dup := scopes[sc]; dup {
				return nil, &FieldError{Field: sf, Msg: fmt.Sprintf("scope %s is already in trust policy %q; a repository is in one trust policy", sc, other)}
			}
			scopes[sc] = tp.Name
			ctp.RegistryScopes = append(ctp.RegistryScopes, sc)
		}
		if len(tp.TrustStores) == 0 {
			return nil, &FieldError{Field: f + ".trustStores", Msg: "required: TYPE:NAME of trustStores"}
		}
		signing := false
		for j, ref := range tp.TrustStores {
			if !stores[ref] {
				return nil, &FieldError{Field: fmt.Sprintf("%s.trustStores[%d]", f, j), Msg: fmt.Sprintf("%q names no trust store (TYPE:NAME, defined under trustStores)", ref)}
			}
			signing = signing || !strings.HasPrefix(ref, NotationStoreTSA+":")
		}
		if !signing {
			return nil, &FieldError{Field: f + ".trustStores", Msg: "needs a ca or signingAuthority store; tsa stores only verify timestamps"}
		}
		if len(tp.TrustedIdentities) == 0 {
			return nil, &FieldError{Field: f + ".trustedIdentities", Msg: "required: \"x509.subject: <distinguished name>\" or \"*\""}
		}
		for j, id := range tp.TrustedIdentities {
			jf := fmt.Sprintf("%s.trustedIdentities[%d]", f, j)
			switch {
			case id == "*":
				if len(tp.TrustedIdentities) > 1 {
					return nil, &FieldError{Field: jf, Msg: "\"*\" cannot be combined with other identities"}
				}
			case strings.HasPrefix(id, "x509.subject:") && strings.TrimSpace(strings.TrimPrefix(id, "x509.subject:")) != "":
			default:
				return nil, &FieldError{Field: jf, Msg: fmt.Sprintf("%q is neither \"x509.subject: <distinguished name>\" nor \"*\"", id)}
			}
		}
		fmt.Fprintf(h, "notation-policy=%s\x00%v\x00%s\x00%v\x00%v\x00%s\x00", ctp.Name, ctp.RegistryScopes, ctp.VerificationLevel, ctp.TrustStores, ctp.TrustedIdentities, ctp.VerifyTimestamp)
		out.TrustPolicies = append(out.TrustPolicies, ctp)
	}
	rv := n.Revocation
	switch {
	case rv.Off && len(rv.CRLs) > 0:
		return nil, &FieldError{Field: field + ".revocation", Msg: "set crls or off, not both"}
	case !rv.Off && len(rv.CRLs) == 0:
		return nil, &FieldError{Field: field + ".revocation", Msg: "required: crls (paths of CRL files) or off: true; buildguard fetches no CRL and asks no OCSP responder at admission"}
	}
	for j, c := range rv.CRLs {
		if strings.TrimSpace(c) == "" || strings.ContainsAny(c, "\n\r") {
			return nil, &FieldError{Field: fmt.Sprintf("%s.revocation.crls[%d]", field, j), Msg: "not a file path"}
		}
		fmt.Fprintf(h, "notation-crl=%s\x00", c)
	}
	fmt.Fprintf(h, "notation-revocation-off=%v\x00", rv.Off)
	return out, nil
}

// checkCertificateEntry accepts PEM certificates or a file path.
func checkCertificateEntry(c string) error {
	c = strings.TrimSpace(c)
	if c == "" {
		return fmt.Errorf("empty: give a PEM certificate or the path of a file holding one")
	}
	if !strings.HasPrefix(c, "-----BEGIN") {
		if strings.ContainsAny(c, "\n\r") {
			return fmt.Errorf("neither a PEM certificate (-----BEGIN CERTIFICATE-----) nor a file path")
		}
		return nil
	}
	rest, n := []byte(c), 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return fmt.Errorf("PEM block %q is not a CERTIFICATE", b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Errorf("not an X.509 certificate: %v", err)
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("no PEM certificate in it")
	}
	return nil
}

func (n *NotationTrust) describe() []string {
	var out []string
	for _, tp := range n.TrustPolicies {
		out = append(out, fmt.Sprintf("notation trust policy %s (%s, %s)", tp.Name, strings.Join(tp.TrustStores, ","), strings.Join(tp.TrustedIdentities, "; ")))
	}
	return out
}
