package provenance

import (
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"buildguard.dev/buildguard/policy"
)

// vsaStatement is a SLSA verification summary of digest d in repo.
func vsaStatement(d v1.Hash, verifier, resourceURI, result string, verified time.Time, levels ...string) []byte {
	quoted := make([]string, len(levels))
	for i, l := range levels {
		quoted[i] = fmt.Sprintf("%q", l)
	}
	return []byte(fmt.Sprintf(`{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"img","digest":{"sha256":%q}}],"predicateType":%q,`+
		`"predicate":{"verifier":{"id":%q},"timeVerified":%q,"resourceUri":%q,"policy":{"uri":"https://policy.acme.example/slsa"},`+
		`"inputAttestations":[],"verificationResult":%q,"verifiedLevels":[%s],"slsaVersion":"1.0"}}`,
		d.Hex, VSAv1, verifier, verified.UTC().Format(time.RFC3339), resourceURI, result, strings.Join(quoted, ",")))
}

// TestVerifyVSA: a verification summary signed by a key the policy trusts,
// stored as a cosign attestation (tag scheme or referrer) or a Sigstore
// bundle, satisfies provenance.required; what it says is judged.
func TestVerifyVSA(t *testing.T) {
	key, other := newKey(t, "ecdsa"), newKey(t, "ecdsa")
	ss := newSigstore(t)
	now := time.Now()
	const verifier = "https://verifier.acme.example/slsa"
	spec := policy.Spec{
		Signatures: policy.Signatures{Keys: []string{key.pem}, IgnoreTlog: true},
		Provenance: policy.ProvenanceRequirements{Required: true, VSA: &policy.VSARequirements{
			Verifiers: []string{"https://verifier.acme.example/*"}, MinLevels: []string{"SLSA_BUILD_LEVEL_3"}, MaxAge: policy.Duration{Duration: 24 * time.Hour}}},
	}
	type store func(t *testing.T, reg *testRegistry, d v1.Hash, st []byte, k keyPair)
	stores := map[string]store{
		"tag": func(t *testing.T, reg *testRegistry, d v1.Hash, st []byte, k keyPair) {
			reg.attach(t, "acme/shop", d, true, false, layer{envelope(t, k.signer, st), nil})
		},
		"referrers": func(t *testing.T, reg *testRegistry, d v1.Hash, st []byte, k keyPair) {
			reg.attach(t, "acme/shop", d, true, true, layer{envelope(t, k.signer, st), nil})
		},
		"bundle": func(t *testing.T, reg *testRegistry, d v1.Hash, st []byte, k keyPair) {
			reg.attachBundle(t, "acme/shop", d, ss.dsseBundle(t, keySigner(k), st, time.Time{}, nil))
		},
	}
	tests := []struct {
		name   string
		st     func(repo string, d v1.Hash) []byte
		signer keyPair
		want   string
	}{
		{"passed, level 3", func(repo string, d v1.Hash) []byte {
			return vsaStatement(d, verifier, repo+"@"+d.String(), "PASSED", now.Add(-time.Hour), "SLSA_BUILD_LEVEL_3")
		}, key, ""},
		{"failed", func(repo string, d v1.Hash) []byte {
			return vsaStatement(d, verifier, repo+"@"+d.String(), "FAILED", now.Add(-time.Hour), "SLSA_BUILD_LEVEL_3")
		}, key, "vsa-failed"},
		{"level 1", func(repo string, d v1.Hash) []byte {
			return vsaStatement(d, verifier, repo+"@"+d.String(), "PASSED", now.Add(-time.Hour), "SLSA_BUILD_LEVEL_1")
		}, key, "vsa-failed"},
		{"a day and an hour old", func(repo string, d v1.Hash) []byte {
			return vsaStatement(d, verifier, repo+"@"+d.String(), "PASSED", now.Add(-25*time.Hour), "SLSA_BUILD_LEVEL_3")
		}, key, "vsa-stale"},
		{"about another repository", func(repo string, d v1.Hash) []byte {
			return vsaStatement(d, verifier, "ghcr.io/evil/shop@"+d.String(), "PASSED", now.Add(-time.Hour), "SLSA_BUILD_LEVEL_3")
		}, key, "vsa-failed"},
		{"signed by an untrusted key", func(repo string, d v1.Hash) []byte {
			return vsaStatement(d, verifier, repo+"@"+d.String(), "PASSED", now.Add(-time.Hour), "SLSA_BUILD_LEVEL_3")
		}, other, "missing-provenance"},
		{"an untrusted verifier", func(repo string, d v1.Hash) []byte {
			return vsaStatement(d, "https://verifier.evil.example", repo+"@"+d.String(), "PASSED", now.Add(-time.Hour), "SLSA_BUILD_LEVEL_3")
		}, key, "missing-provenance"},
	}
	for storeName, put := range stores {
		for _, tt := range tests {
			t.Run(storeName+"/"+tt.name, func(t *testing.T) {
				reg := newTestRegistry(t, storeName != "tag")
				ref, d := reg.pushImage(t, "acme/shop:1")
				put(t, reg, d, tt.st(ref.Context().Name(), d), tt.signer)
				v, _ := newVerifier(t)
				rules, pv, vd := decide(t, v, ref.String(), nil, compile(t, spec), now)
				if got := strings.Join(rules, ","); got != tt.want {
					t.Fatalf("Decide = %q, want %q; attestations %+v; findings %+v", got, tt.want, pv.Attestations, vd.Images[0].Findings)
				}
				if len(pv.Attestations) != 1 || pv.Attestations[0].VSA == nil || pv.Attestations[0].VSA.VerifierID == "" {
					t.Errorf("attestations %+v, want one verification summary", pv.Attestations)
				}
			})
		}
	}
}

// TestSignedAt: a cosign signature whose Rekor SET verifies carries its
// integrated time, and fresh-image judges an image by it whatever its
// config claims.
func TestSignedAt(t *testing.T) {
	ss := newSigstore(t)
	key := newKey(t, "ecdsa")
	reg := newTestRegistry(t, false)
	ref, d := reg.pushImage(t, "acme/shop:1")
	logged := time.Now().Add(-2 * time.Minute).Truncate(time.Second)
	payload := simpleSigning(reg.host+"/acme/shop", d)
	b64 := sign(t, key.signer, payload)
	reg.attach(t, "acme/shop", d, false, false, layer{payload, map[string]string{annSignature: b64, annBundle: ss.set(t, payload, b64, key.pem, logged)}})
	for _, tt := range []struct {
		ignoreTlog bool
		want       string // rules
	}{{false, "fresh-image"}, {true, ""}} {
		sig := policy.Signatures{Required: true, Keys: []string{key.pem}, TrustedRoot: ss.trustedRootPath, IgnoreTlog: tt.ignoreTlog}
		v, _ := newVerifier(t)
		rules, pv, vd := decide(t, v, ref.String(), nil, compile(t, policy.Spec{Signatures: sig}), logged.Add(time.Minute))
		if got := strings.Join(rules, ","); got != tt.want {
			t.Fatalf("ignoreTlog=%v: Decide = %q, want %q; %+v", tt.ignoreTlog, got, tt.want, vd.Images[0].Findings)
		}
		s := pv.Signatures[0]
		if tt.ignoreTlog {
			if !s.SignedAt.IsZero() {
				t.Errorf("ignoreTlog: signed at %v; an unverified log time proves nothing", s.SignedAt)
			}
			continue
		}
		if !s.SignedAt.Equal(logged) || s.SignedAtSource != policy.TimeSourceTransparencyLog {
			t.Errorf("signed at %v by %q, want %v by the transparency log", s.SignedAt, s.SignedAtSource, logged)
		}
		if ev := vd.Images[0].Findings[0].Evidence; ev["timeSource"] != policy.TimeSourceTransparencyLog {
			t.Errorf("fresh-image evidence %v, want timeSource transparency-log", ev)
		}
	}
}
