package provenance

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
)

// coldCase is one image and the policy that verifies it.
type coldCase struct {
	name string
	reg  *testRegistry
	ref  string
	img  *policy.Image
	p    *policy.Policy
	// check says whether what Verify found is what was signed.
	check func(*policy.Provenance) bool
}

// coldCases signs an image in a registry with the referrers API and one
// without (the referrers tag schema, or for cosign's legacy format the
// tag scheme) with: cosign (a key signature and a SLSA provenance
// attestation, the legacy format, as TestRoundTrips), Notation (one JWS
// signature by a CA-issued certificate, revocation off), and a GitHub
// artifact attestation of GitHub's own instance (one Sigstore bundle with
// an RFC 3161 timestamp, matched on GitHub claims, trusted roots in JSON
// Lines).
func coldCases(b testing.TB) []coldCase {
	now := time.Now()
	key := newKey(b, "ecdsa")
	ca := newNotaryCA(b, "Acme Root")
	nkey, chain := ca.issue(b, "release", "")
	publicGood, github := newSigstoreInstance(b, true, true), newSigstoreInstance(b, false, true)
	roots := writeJSONL(b, publicGood, github)
	claims := policy.GitHubClaims{SourceRepository: "https://github.com/acme/shop", SourceRef: "refs/heads/main", RunnerEnvironment: "github-hosted"}
	const wf = "https://github.com/acme/shop/.github/workflows/release.yml@refs/heads/main"
	var out []coldCase
	for _, referrers := range []bool{true, false} {
		scheme := map[bool]string{true: "referrers", false: "tag-schema"}[referrers]
		resolve := func(reg *testRegistry, ref string) *policy.Image {
			img, err := registry.New(registry.WithTransport(http.DefaultTransport)).Resolve(context.Background(), req(b, ref))
			if err != nil {
				b.Fatal(err)
			}
			return img
		}
		compileB := func(s policy.Spec) *policy.Policy {
			s.Registries = policy.Registries{Allow: []string{"127.0.0.1:*/**"}, Insecure: []string{"127.0.0.1:*"}}
			p, err := policy.Compile(s)
			if err != nil {
				b.Fatal(err)
			}
			return p
		}

		reg := newTestRegistry(b, referrers)
		ref, d := reg.pushImage(b, "acme/shop:1")
		payload := simpleSigning(reg.host+"/acme/shop", d)
		reg.attach(b, "acme/shop", d, false, referrers, layer{payload, map[string]string{annSignature: sign(b, key.signer, payload)}})
		reg.attach(b, "acme/shop", d, true, referrers, layer{envelope(b, key.signer, statement(SLSAv1, builderID, sourceURI, now.Add(-time.Hour), d)), nil})
		out = append(out, coldCase{name: "cosign/" + scheme, reg: reg, ref: ref.String(), img: resolve(reg, ref.String()),
			p: compileB(policy.Spec{Signatures: policy.Signatures{Required: true, Keys: []string{key.pem}, IgnoreTlog: true}, Provenance: policy.ProvenanceRequirements{Required: true}}),
			check: func(pv *policy.Provenance) bool {
				return len(pv.Signatures) == 1 && pv.Signatures[0].Verified && len(pv.Attestations) == 1 && pv.Attestations[0].Verified
			}})

		reg = newTestRegistry(b, referrers)
		ref, d = reg.pushImage(b, "acme/shop:1")
		notationSign(b, reg.host, "acme/shop", d, nkey, chain, notationJWS)
		out = append(out, coldCase{name: "notation/" + scheme, reg: reg, ref: ref.String(), img: resolve(reg, ref.String()),
			p: compileB(policy.Spec{Signatures: policy.Signatures{Required: true, Notation: &policy.NotationTrust{
				TrustStores:   []policy.NotationTrustStore{{Name: "acme", Certificates: []string{ca.pemPath}}},
				TrustPolicies: []policy.NotationTrustPolicy{{Name: "all", RegistryScopes: []string{"*"}, TrustStores: []string{"ca:acme"}, TrustedIdentities: []string{"*"}}},
				Revocation:    policy.NotationRevocation{Off: true}}}}),
			check: func(pv *policy.Provenance) bool {
				return len(pv.Signatures) == 1 && pv.Signatures[0].Verified && pv.Signatures[0].Type == "notation"
			}})

		reg = newTestRegistry(b, referrers)
		ref, d = reg.pushImage(b, "acme/shop:1")
		st := []byte(`{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"img","digest":{"sha256":"` + d.Hex + `"}}],"predicateType":"` + SLSAv1 +
			`","predicate":{"buildDefinition":{"buildType":"https://example/build","externalParameters":{}},"runDetails":{"builder":{"id":"` + builderID + `"}}}}`)
		reg.attachBundle(b, "acme/shop", d, github.stampedBundle(b, github.githubSigner(b, wf, claims, now.Add(-2*time.Minute)), st, time.Time{}, github.tsa, now.Add(-90*time.Second)))
		out = append(out, coldCase{name: "github-bundle/" + scheme, reg: reg, ref: ref.String(), img: resolve(reg, ref.String()),
			p: compileB(policy.Spec{Signatures: policy.Signatures{GitHub: []policy.GitHubIdentity{{Repository: "acme/shop"}}, TrustedRoot: roots},
				Provenance: policy.ProvenanceRequirements{Required: true}}),
			check: func(pv *policy.Provenance) bool {
				return len(pv.Attestations) == 1 && pv.Attestations[0].Verified && pv.Attestations[0].SignedAtSource == policy.TimeSourceTimestampAuthority
			}})
	}
	return out
}

// coldVerify verifies c with a new registry client and a new Verifier:
// no cache, no connection, no trust settings reused. It returns the
// requests it made and how long it took.
func coldVerify(b testing.TB, c coldCase) (int, time.Duration) {
	c.reg.reset()
	start := time.Now()
	v := New(registry.New(registry.WithTransport(http.DefaultTransport.(*http.Transport).Clone())))
	pv := v.Verify(context.Background(), req(b, c.ref), c.img, c.p)
	took := time.Since(start)
	if !c.check(pv) {
		b.Fatalf("%s: Verify = %+v %+v", c.name, pv.Signatures, pv.Attestations)
	}
	return len(c.reg.requests()), took
}

// BenchmarkColdVerification measures the cold cost of verifying an image
// signed with cosign, with Notation, and with a GitHub artifact
// attestation, with and without the referrers API. Every iteration
// verifies every case once, in turn (alternate rounds, so that all see
// the machine alike); it reports each case's median time (ms/…) and its
// registry requests (req/…). The requests include the registry ping of a
// new client.
func BenchmarkColdVerification(b *testing.B) {
	cases := coldCases(b)
	times := make([][]time.Duration, len(cases))
	reqs := make([]int, len(cases))
	for i := range cases {
		coldVerify(b, cases[i]) // warm the test registry, not buildguard
	}
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		for j := range cases {
			i := (j + n) % len(cases)
			r, d := coldVerify(b, cases[i])
			times[i] = append(times[i], d)
			reqs[i] = r
		}
	}
	b.StopTimer()
	for i, c := range cases {
		sort.Slice(times[i], func(a, z int) bool { return times[i][a] < times[i][z] })
		med := times[i][len(times[i])/2]
		b.ReportMetric(float64(med)/float64(time.Millisecond), "ms/"+c.name)
		b.ReportMetric(float64(reqs[i]), "req/"+c.name)
	}
}

// TestColdVerificationRequests pins the registry round trips of a cold
// verification, the figures docs/benchmark-results.md quotes.
func TestColdVerificationRequests(t *testing.T) {
	want := map[string]int{
		// ping, referrers; signature manifest + blob, attestation manifest + blob
		"cosign/referrers": 6,
		// ping, referrers (404), fallback tag (404); .sig manifest + blob, .att manifest + blob
		"cosign/tag-schema": 7,
		// ping, referrers, signature manifest, envelope blob; .sig and .att
		// (404): a Notation signature is not a cosign one
		"notation/referrers": 6,
		// ping, referrers (404), fallback tag index, manifest, blob; .sig, .att (404)
		"notation/tag-schema": 7,
		// ping, referrers, bundle manifest, bundle blob; .sig (404)
		"github-bundle/referrers": 5,
		// ping, referrers (404), fallback tag index, manifest, blob; .sig (404)
		"github-bundle/tag-schema": 6,
	}
	var got []string
	for _, c := range coldCases(t) {
		n, _ := coldVerify(t, c)
		if n != want[c.name] {
			got = append(got, fmt.Sprintf("%s: %d requests, want %d: %v", c.name, n, want[c.name], c.reg.requests()))
		}
	}
	if len(got) > 0 {
		t.Error(strings.Join(got, "\n"))
	}
}
