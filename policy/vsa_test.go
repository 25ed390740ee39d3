package policy

import (
	"strings"
	"testing"
	"time"
)

func TestVSA(t *testing.T) {
	spec := Spec{
		Registries: Registries{Allow: []string{"ghcr.io/**"}},
		Signatures: Signatures{Keys: []string{"/verifier.pub"}, IgnoreTlog: true},
		Provenance: ProvenanceRequirements{Required: true, VSA: &VSARequirements{
			Verifiers: []string{"https://verifier.acme.example/*"},
			MinLevels: []string{"SLSA_BUILD_LEVEL_3"},
			MaxAge:    Duration{24 * time.Hour},
		}},
	}
	p := mustCompile(t, spec)
	d := "sha256:" + strings.Repeat("5e", 32)
	img := image(now.Add(-48 * time.Hour))
	img.Digest, img.Platforms[0].Digest = d, d
	vsa := func(mod func(*VSA)) Attestation {
		v := &VSA{VerifierID: "https://verifier.acme.example/slsa", TimeVerified: now.Add(-time.Hour), ResourceURI: "ghcr.io/acme/shop@" + d,
			Result: "PASSED", VerifiedLevels: []string{"SLSA_BUILD_LEVEL_3"}}
		if mod != nil {
			mod(v)
		}
		return Attestation{Verified: true, PredicateType: PredicateVSAv1, SubjectDigests: []string{d}, KeyFingerprint: "sha256:v", VSA: v}
	}
	tests := []struct {
		name   string
		atts   []Attestation
		want   string
		reason string
	}{
		{"passed at level 3", []Attestation{vsa(nil)}, "", ""},
		{"level 4 meets level 3", []Attestation{vsa(func(v *VSA) { v.VerifiedLevels = []string{"SLSA_BUILD_LEVEL_4", "SLSA_SOURCE_LEVEL_1"} })}, "", ""},
		{"purl resourceUri", []Attestation{vsa(func(v *VSA) {
			v.ResourceURI = "pkg:oci/shop@sha256%3A" + strings.Repeat("5e", 32) + "?repository_url=ghcr.io/acme"
		})}, "", ""},
		{"level 2 does not", []Attestation{vsa(func(v *VSA) { v.VerifiedLevels = []string{"SLSA_BUILD_LEVEL_2"} })}, "vsa-failed/deny", "do not reach SLSA_BUILD_LEVEL_3"},
		{"a source level is not a build level", []Attestation{vsa(func(v *VSA) { v.VerifiedLevels = []string{"SLSA_SOURCE_LEVEL_3"} })}, "vsa-failed/deny", "do not reach"},
		{"failed", []Attestation{vsa(func(v *VSA) { v.Result = "FAILED" })}, "vsa-failed/deny", `verificationResult is "FAILED"`},
		{"another repository", []Attestation{vsa(func(v *VSA) { v.ResourceURI = "ghcr.io/evil/shop@" + d })}, "vsa-failed/deny", "ghcr.io/evil/shop"},
		{"another digest", []Attestation{vsa(func(v *VSA) { v.ResourceURI = "ghcr.io/acme/shop@sha256:" + strings.Repeat("0", 64) })}, "vsa-failed/deny", "not this image's"},
		{"stale", []Attestation{vsa(func(v *VSA) { v.TimeVerified = now.Add(-25 * time.Hour) })}, "vsa-stale/deny", "longer than provenance.vsa.maxAge 24h"},
		{"newest of a verifier decides", []Attestation{vsa(func(v *VSA) { v.TimeVerified = now.Add(-25 * time.Hour) }), vsa(nil)}, "", ""},
		{"a newer FAILED overrides", []Attestation{vsa(func(v *VSA) { v.TimeVerified = now.Add(-2 * time.Hour) }), vsa(func(v *VSA) { v.Result = "FAILED" })}, "vsa-failed/deny", "FAILED"},
		{"an untrusted verifier is not enough", []Attestation{vsa(func(v *VSA) { v.VerifierID = "https://other.example/v" })}, "missing-provenance/deny", ""},
		{"an unverified VSA is not enough", []Attestation{func() Attestation { a := vsa(nil); a.Verified = false; a.Error = "bad signature"; return a }()}, "missing-provenance/deny", ""},
		{"nothing", nil, "missing-provenance/deny", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Container{Image: "ghcr.io/acme/shop:1", Resolved: img, Provenance: map[string]*Provenance{"": {Attestations: tt.atts}}}
			v := Decide(p, pod(c))
			if got := strings.Join(rules(v), " "); got != tt.want {
				t.Fatalf("Decide = %q, want %q; findings %+v", got, tt.want, v.Images[0].Findings)
			}
			if tt.reason == "" {
				return
			}
			f := v.Images[0].Findings[0]
			if !strings.Contains(f.Evidence["reason"].(string), tt.reason) || f.Evidence["verifier"] == "" || f.Evidence["verifiedLevels"] == nil {
				t.Errorf("evidence %v, want reason containing %q, the verifier and the levels", f.Evidence, tt.reason)
			}
		})
	}
}

func TestCompileVSA(t *testing.T) {
	for _, tt := range []struct {
		vsa  VSARequirements
		want string
	}{
		{VSARequirements{}, "provenance.vsa.verifiers"},
		{VSARequirements{Verifiers: []string{"a b"}}, "provenance.vsa.verifiers[0]"},
		{VSARequirements{Verifiers: []string{"v"}, MinLevels: []string{"LEVEL3"}}, "provenance.vsa.minLevels[0]"},
		{VSARequirements{Verifiers: []string{"v"}, MaxAge: Duration{-time.Second}}, "provenance.vsa.maxAge"},
	} {
		v := tt.vsa
		_, err := Compile(Spec{Signatures: Signatures{Keys: []string{"/k"}, IgnoreTlog: true}, Provenance: ProvenanceRequirements{VSA: &v}})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Compile(vsa %+v) = %v, want an error naming %s", tt.vsa, err, tt.want)
		}
	}
}

func TestParseResourceURI(t *testing.T) {
	d := "sha256:" + strings.Repeat("ab", 32)
	for _, tt := range []struct {
		in, repo, digest string
	}{
		{"ghcr.io/acme/shop@" + d, "ghcr.io/acme/shop", d},
		{"oci://ghcr.io/acme/shop@" + d, "ghcr.io/acme/shop", d},
		{"docker://nginx@" + d, "index.docker.io/library/nginx", d},
		{"pkg:oci/shop@sha256%3A" + strings.Repeat("ab", 32) + "?repository_url=ghcr.io/acme", "ghcr.io/acme/shop", d},
		{"pkg:oci/shop@sha256%3A" + strings.Repeat("ab", 32) + "?repository_url=ghcr.io/acme/shop&tag=1", "ghcr.io/acme/shop/shop", d},
		{"pkg:docker/acme/shop@" + d + "?repository_url=registry.acme.internal:5000", "registry.acme.internal:5000/acme/shop", d},
		{"pkg:docker/library/nginx@" + d, "index.docker.io/library/nginx", d},
	} {
		repo, digest, err := ParseResourceURI(tt.in)
		if err != nil || repo != tt.repo || digest != tt.digest {
			t.Errorf("ParseResourceURI(%q) = %q, %q, %v, want %q, %q", tt.in, repo, digest, err, tt.repo, tt.digest)
		}
	}
	for _, bad := range []string{"", "ghcr.io/acme/shop:1", "pkg:npm/x@1", "pkg:oci/shop@sha256%3Aab", "pkg:oci/shop@" + d, "https://", strings.Repeat("a", 3000)} {
		if r, d, err := ParseResourceURI(bad); err == nil {
			t.Errorf("ParseResourceURI(%q) = %q, %q, want an error", bad, r, d)
		}
	}
}

// FuzzParseResourceURI: resourceUri is untrusted text from a VSA; it
// never panics, and what it accepts names a repository and a digest that
// parse again.
func FuzzParseResourceURI(f *testing.F) {
	d := "sha256:" + strings.Repeat("ab", 32)
	for _, s := range []string{"ghcr.io/acme/shop@" + d, "pkg:oci/shop@sha256%3A" + strings.Repeat("ab", 32) + "?repository_url=ghcr.io/acme", "pkg:docker/a/b@" + d, "oci://x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		repo, digest, err := ParseResourceURI(s)
		if err != nil {
			return
		}
		if repo == "" || !strings.HasPrefix(digest, "sha256:") && !strings.HasPrefix(digest, "sha512:") && !strings.Contains(digest, ":") {
			t.Errorf("ParseResourceURI(%q) = %q, %q", s, repo, digest)
		}
		if r2, d2, err := ParseResourceURI(repo + "@" + digest); err != nil || r2 != repo || d2 != digest {
			t.Errorf("ParseResourceURI(%q) = %q, %q, %v; its own output does not parse back", s, r2, d2, err)
		}
	})
}
