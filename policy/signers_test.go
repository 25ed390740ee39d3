package policy

import (
	"strings"
	"testing"
	"time"
)

func TestCompileSigners(t *testing.T) {
	store := NotationTrustStore{Name: "acme", Certificates: []string{"/etc/buildguard/acme-ca.pem"}}
	tp := NotationTrustPolicy{Name: "prod", RegistryScopes: []string{"ghcr.io/acme/shop"}, TrustStores: []string{"ca:acme"}, TrustedIdentities: []string{"x509.subject: CN=release, O=Acme"}}
	notation := func(mod func(*NotationTrust)) *NotationTrust {
		n := &NotationTrust{TrustStores: []NotationTrustStore{store}, TrustPolicies: []NotationTrustPolicy{tp}, Revocation: NotationRevocation{Off: true}}
		if mod != nil {
			mod(n)
		}
		return n
	}
	gh := func(g GitHubIdentity) Signatures {
		return Signatures{Required: true, GitHub: []GitHubIdentity{g}, TrustedRoot: "/etc/buildguard/trusted_root.jsonl"}
	}
	tests := []struct {
		name    string
		sig     Signatures
		wantErr string
	}{
		{"notation alone satisfies required", Signatures{Required: true, Notation: notation(nil)}, ""},
		{"notation with CRLs", Signatures{Required: true, Notation: notation(func(n *NotationTrust) { n.Revocation = NotationRevocation{CRLs: []string{"/etc/acme.crl"}} })}, ""},
		{"notation needs a revocation choice", Signatures{Notation: notation(func(n *NotationTrust) { n.Revocation = NotationRevocation{} })}, "signatures.notation.revocation"},
		{"not both", Signatures{Notation: notation(func(n *NotationTrust) { n.Revocation = NotationRevocation{Off: true, CRLs: []string{"/c"}} })}, "signatures.notation.revocation"},
		{"no trust policy", Signatures{Notation: notation(func(n *NotationTrust) { n.TrustPolicies = nil })}, "signatures.notation.trustPolicies"},
		{"unknown store", Signatures{Notation: notation(func(n *NotationTrust) { n.TrustPolicies[0].TrustStores = []string{"ca:other"} })}, "trustPolicies[0].trustStores[0]"},
		{"tsa store alone", Signatures{Notation: notation(func(n *NotationTrust) {
			n.TrustStores = append(n.TrustStores, NotationTrustStore{Name: "ts", Type: "tsa", Certificates: []string{"/t.pem"}})
			n.TrustPolicies[0].TrustStores = []string{"tsa:ts"}
		})}, "needs a ca or signingAuthority store"},
		{"bad store type", Signatures{Notation: notation(func(n *NotationTrust) { n.TrustStores[0].Type = "root" })}, "trustStores[0].type"},
		{"store defined twice", Signatures{Notation: notation(func(n *NotationTrust) { n.TrustStores = append(n.TrustStores, store) })}, "defined twice"},
		{"bad inline certificate", Signatures{Notation: notation(func(n *NotationTrust) {
			n.TrustStores[0].Certificates = []string{"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"}
		})}, "trustStores[0].certificates[0]"},
		{"skip level", Signatures{Notation: notation(func(n *NotationTrust) { n.TrustPolicies[0].VerificationLevel = "skip" })}, "verificationLevel"},
		{"bad level", Signatures{Notation: notation(func(n *NotationTrust) { n.TrustPolicies[0].VerificationLevel = "lenient" })}, "verificationLevel"},
		{"bad scope", Signatures{Notation: notation(func(n *NotationTrust) { n.TrustPolicies[0].RegistryScopes = []string{"ghcr.io/acme/*"} })}, "registryScopes[0]"},
		{"wildcard with others", Signatures{Notation: notation(func(n *NotationTrust) { n.TrustPolicies[0].RegistryScopes = []string{"*", "ghcr.io/a/b"} })}, "registryScopes[0]"},
		{"scope in two policies", Signatures{Notation: notation(func(n *NotationTrust) {
			other := tp
			other.Name = "again"
			n.TrustPolicies = append(n.TrustPolicies, other)
		})}, "already in trust policy"},
		{"bad identity", Signatures{Notation: notation(func(n *NotationTrust) { n.TrustPolicies[0].TrustedIdentities = []string{"CN=release"} })}, "trustedIdentities[0]"},
		{"bad verifyTimestamp", Signatures{Notation: notation(func(n *NotationTrust) { n.TrustPolicies[0].VerifyTimestamp = "never" })}, "verifyTimestamp"},
		{"github repository", gh(GitHubIdentity{Repository: "acme/shop", SignerWorkflow: "acme/shared/.github/workflows/build.yml", DenySelfHostedRunners: true}), ""},
		{"github needs a trusted root", Signatures{GitHub: []GitHubIdentity{{Owner: "acme"}}}, "signatures.trustedRoot"},
		{"github repository or owner", gh(GitHubIdentity{}), "signatures.github[0]"},
		{"github not both", gh(GitHubIdentity{Repository: "acme/shop", Owner: "acme"}), "signatures.github[0]"},
		{"github bad repository", gh(GitHubIdentity{Repository: "acme"}), "signatures.github[0].repository"},
		{"github bad workflow", gh(GitHubIdentity{Owner: "acme", SignerWorkflow: "release.yml"}), "signatures.github[0].signerWorkflow"},
		{"github bad ref", gh(GitHubIdentity{Owner: "acme", SourceRef: "main"}), "signatures.github[0].sourceRef"},
		{"github workflow and repository", gh(GitHubIdentity{Owner: "acme", SignerWorkflow: "a/b/c/d.yml", SignerRepository: "a/b"}), "signatures.github[0]"},
	}
	for _, tt := range tests {
		_, err := Compile(Spec{Signatures: tt.sig})
		if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("Compile(%s) = %v, want error containing %q", tt.name, err, tt.wantErr)
		}
	}
	// Scopes are normalised as image references are.
	p := mustCompile(t, Spec{Signatures: Signatures{Notation: notation(func(n *NotationTrust) { n.TrustPolicies[0].RegistryScopes = []string{"docker.io/library/nginx"} })}})
	if got := p.Trust().Notation.TrustPolicies[0].RegistryScopes[0]; got != "index.docker.io/library/nginx" {
		t.Errorf("scope = %q, want index.docker.io/library/nginx", got)
	}
	q := mustCompile(t, Spec{Signatures: Signatures{Notation: notation(func(n *NotationTrust) { n.TrustPolicies[0].VerificationLevel = "audit" })}})
	if p.Trust().Fingerprint == q.Trust().Fingerprint {
		t.Errorf("two Notation trust policies share the fingerprint %s", p.Trust().Fingerprint)
	}
}

func TestGitHubMatcher(t *testing.T) {
	claims := GitHubClaims{SourceRepository: "https://github.com/Acme/Shop", SourceRef: "refs/tags/v1.2.0",
		SignerWorkflow: "https://github.com/acme/shared/.github/workflows/build.yml@refs/heads/main", RunnerEnvironment: "github-hosted"}
	san := claims.SignerWorkflow
	tests := []struct {
		id      GitHubIdentity
		issuer  string
		claims  GitHubClaims
		wantErr string
	}{
		{GitHubIdentity{Repository: "acme/shop", SignerRepository: "acme/shared"}, GitHubIssuer, claims, ""},
		{GitHubIdentity{Owner: "acme", SignerWorkflow: "github.com/acme/shared/.github/workflows/build.yml", SourceRef: "refs/tags/v*", DenySelfHostedRunners: true}, GitHubIssuer, claims, ""},
		{GitHubIdentity{Repository: "acme/shop"}, GitHubIssuer, claims, "signed by"},
		{GitHubIdentity{Repository: "acme/other", SignerRepository: "acme/shared"}, GitHubIssuer, claims, "source repository"},
		{GitHubIdentity{Owner: "evil", SignerRepository: "acme/shared"}, GitHubIssuer, claims, "not owned by evil"},
		{GitHubIdentity{Owner: "acme", SignerWorkflow: "acme/shared/.github/workflows/other.yml"}, GitHubIssuer, claims, "signed by"},
		{GitHubIdentity{Owner: "acme", SignerRepository: "acme/shared", SourceRef: "refs/heads/main"}, GitHubIssuer, claims, "source ref"},
		{GitHubIdentity{Owner: "acme", SignerRepository: "acme/shared", DenySelfHostedRunners: true}, GitHubIssuer,
			func() GitHubClaims { c := claims; c.RunnerEnvironment = "self-hosted"; return c }(), "self-hosted"},
		{GitHubIdentity{Owner: "acme", SignerRepository: "acme/shared"}, "https://accounts.google.com", claims, "issuer"},
		{GitHubIdentity{Owner: "acme", SignerRepository: "acme/shared", Hostname: "acme.ghe.com"}, GitHubIssuer, claims, "signed by"},
	}
	for _, tt := range tests {
		m, err := compileGitHubIdentity("g", tt.id)
		if err != nil {
			t.Fatalf("compileGitHubIdentity(%+v) = %v", tt.id, err)
		}
		err = m.Match(tt.issuer, san, tt.claims)
		if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: Match = %v, want error containing %q", tt.id, err, tt.wantErr)
		}
	}
}

// TestNotationLevels: what a Notation verification level enforces
// decides whether a signature counts; what it only logs is a warning,
// never a denial.
func TestNotationLevels(t *testing.T) {
	n := &NotationTrust{TrustStores: []NotationTrustStore{{Name: "acme", Certificates: []string{"/ca.pem"}}},
		TrustPolicies: []NotationTrustPolicy{{Name: "prod", RegistryScopes: []string{"*"}, TrustStores: []string{"ca:acme"}, TrustedIdentities: []string{"*"}, VerificationLevel: "permissive"}},
		Revocation:    NotationRevocation{Off: true}}
	spec := Spec{Registries: Registries{Allow: []string{"ghcr.io/**"}}, Signatures: Signatures{Required: true, Notation: n}}
	p := mustCompile(t, spec)
	img := image(now.Add(-48 * time.Hour))
	nsig := func(verified bool, logged ...string) Signature {
		return Signature{On: "sha256:m", Verified: verified, Type: "notation", Source: "referrers",
			Notation: &NotationResult{Envelope: "jws", TrustPolicy: "prod", VerificationLevel: "permissive", Revocation: "off", Logged: logged, Signer: "CN=release,O=Acme"}}
	}
	tests := []struct {
		name string
		sigs []Signature
		want string
	}{
		{"verified", []Signature{nsig(true)}, ""},
		{"verified with an expired certificate, logged", []Signature{nsig(true, "expiry: digital signature has expired")}, "untrusted-signer/warn"},
		{"logged, but another verified cleanly", []Signature{nsig(true, "expiry: expired"), nsig(true)}, ""},
		{"enforced check failed", []Signature{func() Signature { s := nsig(false); s.Error = "authenticity: not trusted"; return s }()}, "untrusted-signer/deny"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := Decide(p, pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: img, Provenance: map[string]*Provenance{"": {Signatures: tt.sigs}}}))
			if got := strings.Join(rules(v), " "); got != tt.want {
				t.Fatalf("Decide = %q, want %q; %+v", got, tt.want, v.Images[0].Findings)
			}
			if tt.want == "" {
				return
			}
			f := v.Images[0].Findings[0]
			types, _ := f.Evidence["signatureTypes"].([]string)
			if len(types) == 0 || !strings.HasPrefix(types[0], "notation") {
				t.Errorf("evidence %v does not say the signature type is notation", f.Evidence)
			}
			if f.Evidence["notationRevocation"] != "off" {
				t.Errorf("evidence %v does not say revocation checking is off", f.Evidence)
			}
		})
	}
	spec.Rules = map[RuleID]Action{RuleUntrustedSigner: ActionIgnore}
	v := Decide(mustCompile(t, spec), pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: img, Provenance: map[string]*Provenance{"": {Signatures: []Signature{nsig(true, "expiry: x")}}}}))
	if got := strings.Join(rules(v), " "); got != "untrusted-signer/ignore" {
		t.Errorf("Decide with untrusted-signer ignored = %q, want untrusted-signer/ignore", got)
	}
}

// TestParseProvenanceFile: the settings of docs/provenance.md's example,
// as a policy file (strict YAML), compile.
func TestParseProvenanceFile(t *testing.T) {
	p, err := Parse([]byte(`apiVersion: buildguard.dev/v1alpha1
kind: Policy
registries:
  allow: ["ghcr.io/acme/**"]
signatures:
  required: true
  github:
    - repository: acme/shop
      signerWorkflow: acme/shared-workflows/.github/workflows/build.yml
      sourceRef: "refs/tags/v*"
      denySelfHostedRunners: true
  trustedRoot: /etc/buildguard/trusted_root.jsonl
  notation:
    trustStores:
      - {name: acme, type: ca, certificates: ["/etc/buildguard/notation/acme-root.pem"]}
      - {name: digicert, type: tsa, certificates: ["/etc/buildguard/notation/tsa-root.pem"]}
    trustPolicies:
      - name: production
        registryScopes: ["ghcr.io/acme/shop", "ghcr.io/acme/api"]
        verificationLevel: strict
        trustStores: ["ca:acme", "tsa:digicert"]
        trustedIdentities: ["x509.subject: C=US, ST=WA, O=Acme, CN=release"]
    revocation:
      off: true
provenance:
  required: true
  vsa:
    verifiers: ["https://verifier.acme.example/*"]
    minLevels: ["SLSA_BUILD_LEVEL_3"]
    maxAge: 168h
`))
	if err != nil {
		t.Fatal(err)
	}
	ts := p.Trust()
	if len(ts.GitHub) != 1 || ts.Notation == nil || !ts.Notation.Revocation.Off || len(ts.Notation.TrustPolicies[0].RegistryScopes) != 2 || !ts.Attestations {
		t.Errorf("Trust() = %+v", ts)
	}
}
