package policy

import (
	"strings"
	"testing"
	"time"
)

func TestCompileProvenance(t *testing.T) {
	tests := []struct {
		name    string
		spec    Spec
		wantErr string
	}{
		{"keys need a root or ignoreTlog", Spec{Signatures: Signatures{Keys: []string{"/etc/cosign.pub"}}}, "signatures.trustedRoot"},
		{"key path with ignoreTlog", Spec{Signatures: Signatures{Required: true, Keys: []string{"/etc/cosign.pub"}, IgnoreTlog: true}}, ""},
		{"bad PEM", Spec{Signatures: Signatures{Keys: []string{"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"}, IgnoreTlog: true}}, "signatures.keys[0]"},
		{"keyless needs a trusted root", Spec{Signatures: Signatures{Keyless: []KeylessIdentity{{Issuer: "i", Subject: "s"}}}}, "signatures.trustedRoot"},
		{"keyless needs a subject", Spec{Signatures: Signatures{Keyless: []KeylessIdentity{{Issuer: "i"}}, TrustedRoot: "/r.json"}}, "signatures.keyless[0]"},
		{"bad regexp", Spec{Signatures: Signatures{Keyless: []KeylessIdentity{{Issuer: "i", SubjectRegExp: "("}}, TrustedRoot: "/r.json"}}, "subjectRegExp"},
		{"required needs a key", Spec{Signatures: Signatures{Required: true}}, "signatures.required"},
		{"provenance required needs a key", Spec{Provenance: ProvenanceRequirements{Required: true}}, "provenance.required"},
		{"bad on", Spec{Signatures: Signatures{On: "sometimes"}}, "signatures.on"},
		{"bad builder glob", Spec{Provenance: ProvenanceRequirements{Builders: []string{"a b"}}}, "provenance.builders[0]"},
	}
	for _, tt := range tests {
		_, err := Compile(tt.spec)
		if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("Compile(%s) = %v, want error containing %q", tt.name, err, tt.wantErr)
		}
	}
}

func TestProvenanceRules(t *testing.T) {
	p, err := Compile(Spec{
		Registries: Registries{Allow: []string{"ghcr.io/acme/*"}},
		Signatures: Signatures{Required: true, Keys: []string{"/k.pub"}, IgnoreTlog: true},
		Provenance: ProvenanceRequirements{Required: true, Builders: []string{"https://builder.example/*"}, Sources: []string{"github.com/acme/*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	img := &Image{Digest: "sha256:aa", Platforms: []Platform{{Digest: "sha256:aa", Created: now.Add(-time.Hour)}}}
	good := Attestation{Verified: true, PredicateType: "https://slsa.dev/provenance/v1", BuilderID: "https://builder.example/v1", Sources: []string{"git+https://github.com/acme/shop@refs/heads/main"}, SubjectDigests: []string{"sha256:aa"}, FinishedOn: now.Add(-time.Minute)}
	sig := Signature{On: "sha256:aa", Verified: true, KeyFingerprint: "sha256:k"}
	tests := []struct {
		name string
		pv   *Provenance
		want string
	}{
		{"all good but built a minute ago (attested)", &Provenance{Signatures: []Signature{sig}, Attestations: []Attestation{good}}, "fresh-image"},
		{"nothing", &Provenance{}, "unsigned,missing-provenance"},
		{"unverified signature", &Provenance{Signatures: []Signature{{On: "sha256:aa", Error: "bad"}}, Attestations: []Attestation{good}}, "fresh-image,untrusted-signer"},
		{"unapproved builder", &Provenance{Signatures: []Signature{sig}, Attestations: []Attestation{func() Attestation { a := good; a.BuilderID = "https://evil/b"; a.FinishedOn = time.Time{}; return a }()}}, "unapproved-builder"},
		{"unapproved source", &Provenance{Signatures: []Signature{sig}, Attestations: []Attestation{func() Attestation {
			a := good
			a.Sources = []string{"https://github.com/evil/x"}
			a.FinishedOn = time.Time{}
			return a
		}()}}, "unapproved-source"},
		{"registry down", &Provenance{Err: &ResolveError{Kind: ErrUnavailable, Message: "timeout"}}, "registry-unavailable"},
		// What a registry that answered served is never an outage.
		{"signature manifest does not decode", &Provenance{Err: &ResolveError{Kind: ErrInvalidImage, Message: "unexpected EOF"}}, "untrusted-signer,missing-provenance"},
		{"signature manifest too large", &Provenance{Err: &ResolveError{Kind: ErrTooLarge, Message: "60000000 bytes"}}, "untrusted-signer,missing-provenance"},
		{"registry redirects to a metadata address", &Provenance{Err: &ResolveError{Kind: ErrForbiddenAddress, Message: "refusing 169.254.169.254"}}, "unapproved-registry"},
	}
	for _, tt := range tests {
		v := Decide(p, Facts{Now: now, Containers: []Container{{Name: "c", Image: "ghcr.io/acme/shop:1", Resolved: img, Provenance: map[string]*Provenance{"": tt.pv}}}})
		var got []string
		for _, f := range v.Images[0].Findings {
			got = append(got, string(f.Rule))
			if f.Rule == RuleFreshImage && f.Evidence["timeSource"] != "attestation" {
				t.Errorf("Decide(%s): fresh-image evidence %v, want timeSource attestation", tt.name, f.Evidence)
			}
		}
		if strings.Join(got, ",") != tt.want {
			t.Errorf("Decide(%s) = %v, want %s", tt.name, got, tt.want)
		}
	}
}
