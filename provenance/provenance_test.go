package provenance

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"

	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
)

const (
	ghIssuer  = "https://token.actions.githubusercontent.com"
	ghSubject = "https://github.com/acme/shop/.github/workflows/release.yml@refs/tags/v1.2.0"
	builderID = "https://github.com/slsa-framework/slsa-github-generator/.github/workflows/generator_container_slsa3.yml@refs/tags/v2.0.0"
	sourceURI = "git+https://github.com/acme/shop@refs/tags/v1.2.0"
)

func newVerifier(t *testing.T) (*Verifier, *registry.Client) {
	c := registry.New(registry.WithTransport(http.DefaultTransport))
	return New(c), c
}

func compile(t *testing.T, s policy.Spec) *policy.Policy {
	t.Helper()
	s.Registries = policy.Registries{Allow: []string{"127.0.0.1:*/**"}, Insecure: []string{"127.0.0.1:*"}}
	p, err := policy.Compile(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// decide runs the verifier and Decide, and returns the rule IDs found.
func decide(t *testing.T, v *Verifier, ref string, img *policy.Image, p *policy.Policy, now time.Time) ([]string, *policy.Provenance, policy.Verdict) {
	t.Helper()
	r, err := registry.New(registry.WithTransport(http.DefaultTransport)).Resolve(context.Background(), req(t, ref))
	if err != nil {
		t.Fatal(err)
	}
	if img == nil {
		img = r
	}
	pv := v.Verify(context.Background(), req(t, ref), img, p)
	c := policy.Container{Name: "app", Kind: policy.KindContainer, Image: ref, Resolved: img, Provenance: map[string]*policy.Provenance{"": pv}}
	vd := policy.Decide(p, policy.Facts{Now: now, Containers: []policy.Container{c}})
	var rules []string
	for _, f := range vd.Images[0].Findings {
		rules = append(rules, string(f.Rule))
	}
	sort.Strings(rules)
	return rules, pv, vd
}

func req(t testing.TB, ref string) registry.Request {
	t.Helper()
	r, err := nameParse(ref)
	if err != nil {
		t.Fatal(err)
	}
	return registry.Request{Ref: r, Insecure: true}
}

func TestVerifySignatures(t *testing.T) {
	ss := newSigstore(t)
	ecKey, rsaKey, edKey, otherKey := newKey(t, "ecdsa"), newKey(t, "rsa"), newKey(t, "ed25519"), newKey(t, "ecdsa")
	now := time.Now()
	// Judged an hour after signing: freshness, judged on the log's time,
	// says nothing here.
	later := now.Add(time.Hour)
	keyless := []policy.KeylessIdentity{{Issuer: ghIssuer, SubjectRegExp: `^https://github.com/acme/.+/.github/workflows/release.yml@refs/tags/v.*$`}}

	type setup func(t *testing.T, reg *testRegistry, repo string, d v1.Hash, referrer bool)
	keySig := func(k keyPair, withSET bool) setup {
		return func(t *testing.T, reg *testRegistry, repo string, d v1.Hash, referrer bool) {
			payload := simpleSigning(reg.host+"/"+repo, d)
			b64 := sign(t, k.signer, payload)
			ann := map[string]string{annSignature: b64}
			if withSET {
				ann[annBundle] = ss.set(t, payload, b64, k.pem, now.Add(-time.Minute))
			}
			reg.attach(t, repo, d, false, referrer, layer{payload, ann})
		}
	}
	certSig := func(subject string, notBefore, integrated time.Time, tamper bool) setup {
		return func(t *testing.T, reg *testRegistry, repo string, d v1.Hash, referrer bool) {
			s, cert, chain := ss.leaf(t, subject, ghIssuer, notBefore)
			payload := simpleSigning(reg.host+"/"+repo, d)
			b64 := sign(t, s, payload)
			ann := map[string]string{annSignature: b64, annCertificate: cert, annChain: chain, annBundle: ss.set(t, payload, b64, cert, integrated)}
			if tamper {
				payload = []byte(strings.Replace(string(payload), "cosign container image signature", "cosign container image signaturE", 1))
			}
			reg.attach(t, repo, d, false, referrer, layer{payload, ann})
		}
	}
	tests := []struct {
		name  string
		spec  policy.Signatures
		setup setup
		want  string // rule IDs, comma-separated
		fp    string // expected key fingerprint of a verified signature
	}{
		{"ecdsa key with SET", policy.Signatures{Required: true, Keys: []string{ecKey.pem}, TrustedRoot: ss.trustedRootPath}, keySig(ecKey, true), "", fingerprint(t, ecKey.pem)},
		{"rsa key, ignoreTlog", policy.Signatures{Required: true, Keys: []string{rsaKey.pem}, IgnoreTlog: true}, keySig(rsaKey, false), "", fingerprint(t, rsaKey.pem)},
		{"ed25519 key among others", policy.Signatures{Required: true, Keys: []string{otherKey.pem, edKey.pem}, IgnoreTlog: true}, keySig(edKey, false), "", fingerprint(t, edKey.pem)},
		{"key without SET when tlog required", policy.Signatures{Required: true, Keys: []string{ecKey.pem}, TrustedRoot: ss.trustedRootPath}, keySig(ecKey, false), "untrusted-signer", ""},
		{"wrong key", policy.Signatures{Required: true, Keys: []string{otherKey.pem}, IgnoreTlog: true}, keySig(ecKey, false), "untrusted-signer", ""},
		{"unsigned", policy.Signatures{Required: true, Keys: []string{ecKey.pem}, IgnoreTlog: true}, nil, "unsigned", ""},
		{"not required", policy.Signatures{Keys: []string{otherKey.pem}, IgnoreTlog: true}, keySig(ecKey, false), "", ""},
		{"keyless", policy.Signatures{Required: true, Keyless: keyless, TrustedRoot: ss.trustedRootPath}, certSig(ghSubject, now.Add(-5*time.Minute), now.Add(-4*time.Minute), false), "", "any"},
		{"keyless wrong identity", policy.Signatures{Required: true, Keyless: keyless, TrustedRoot: ss.trustedRootPath}, certSig("https://github.com/evil/x/.github/workflows/release.yml@refs/tags/v1", now.Add(-5*time.Minute), now.Add(-4*time.Minute), false), "untrusted-signer", ""},
		{"keyless expired certificate at log time", policy.Signatures{Required: true, Keyless: keyless, TrustedRoot: ss.trustedRootPath}, certSig(ghSubject, now.Add(-30*time.Minute), now.Add(-5*time.Minute), false), "untrusted-signer", ""},
		{"keyless expired certificate without log", policy.Signatures{Required: true, Keyless: keyless, TrustedRoot: ss.trustedRootPath, IgnoreTlog: true}, certSig(ghSubject, now.Add(-30*time.Minute), now.Add(-25*time.Minute), false), "untrusted-signer", ""},
		{"keyless tampered payload", policy.Signatures{Required: true, Keyless: keyless, TrustedRoot: ss.trustedRootPath}, certSig(ghSubject, now.Add(-5*time.Minute), now.Add(-4*time.Minute), true), "untrusted-signer", ""},
	}
	for _, referrer := range []bool{false, true} {
		for _, tt := range tests {
			name := tt.name + "/tags"
			if referrer {
				name = tt.name + "/referrers"
			}
			t.Run(name, func(t *testing.T) {
				reg := newTestRegistry(t, referrer)
				ref, d := reg.pushImage(t, "acme/shop:1")
				if tt.setup != nil {
					tt.setup(t, reg, "acme/shop", d, referrer)
				}
				v, _ := newVerifier(t)
				p := compile(t, policy.Spec{Signatures: tt.spec})
				rules, pv, vd := decide(t, v, ref.String(), nil, p, later)
				if got := strings.Join(rules, ","); got != tt.want {
					t.Errorf("Decide(%s) rules = %q, want %q; provenance %+v; findings %+v", tt.name, got, tt.want, pv, vd.Images[0].Findings)
				}
				if tt.fp != "" {
					if len(pv.Signatures) != 1 || !pv.Signatures[0].Verified || (tt.fp != "any" && pv.Signatures[0].KeyFingerprint != tt.fp) {
						t.Errorf("Verify(%s) = %+v, want one verified signature by %s", tt.name, pv.Signatures, tt.fp)
					}
					if want := map[bool]string{false: "tag", true: "referrers"}[referrer]; len(pv.Signatures) == 1 && pv.Signatures[0].Source != want {
						t.Errorf("Verify(%s) source = %q, want %q", tt.name, pv.Signatures[0].Source, want)
					}
				}
			})
		}
	}
}

func fingerprint(t *testing.T, pemKey string) string {
	fp, err := policy.KeyFingerprint([]byte(pemKey))
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

func TestVerifyAttestations(t *testing.T) {
	key := newKey(t, "ecdsa")
	now := time.Now()
	finished := now.Add(-2 * time.Hour)
	spec := policy.Spec{
		Signatures: policy.Signatures{Keys: []string{key.pem}, IgnoreTlog: true},
		Provenance: policy.ProvenanceRequirements{Required: true,
			Builders: []string{"https://github.com/slsa-framework/slsa-github-generator/.github/workflows/generator_container_slsa3.yml@refs/tags/v*"},
			Sources:  []string{"github.com/acme/*"}},
	}
	other := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	tests := []struct {
		name string
		st   func(d v1.Hash) []byte
		want string
	}{
		{"slsa v0.2", func(d v1.Hash) []byte { return statement(SLSAv02, builderID, sourceURI, finished, d) }, ""},
		{"slsa v1", func(d v1.Hash) []byte { return statement(SLSAv1, builderID, sourceURI, finished, d) }, ""},
		{"another digest", func(d v1.Hash) []byte { return statement(SLSAv1, builderID, sourceURI, finished, other) }, "missing-provenance"},
		{"missing", nil, "missing-provenance"},
		{"unapproved builder", func(d v1.Hash) []byte {
			return statement(SLSAv1, "https://evil.example/builder", sourceURI, finished, d)
		}, "unapproved-builder"},
		{"unapproved source", func(d v1.Hash) []byte {
			return statement(SLSAv02, builderID, "git+https://github.com/evil/shop@refs/heads/main", finished, d)
		}, "unapproved-source"},
		{"fresh by attested time", func(d v1.Hash) []byte { return statement(SLSAv1, builderID, sourceURI, now.Add(-time.Minute), d) }, "fresh-image"},
	}
	for _, referrer := range []bool{false, true} {
		for _, tt := range tests {
			t.Run(tt.name+map[bool]string{false: "/tags", true: "/referrers"}[referrer], func(t *testing.T) {
				reg := newTestRegistry(t, referrer)
				ref, d := reg.pushImage(t, "acme/shop:1")
				if tt.st != nil {
					reg.attach(t, "acme/shop", d, true, referrer, layer{envelope(t, key.signer, tt.st(d)), map[string]string{"predicateType": "x"}})
				}
				v, _ := newVerifier(t)
				rules, pv, vd := decide(t, v, ref.String(), nil, compile(t, spec), now)
				if got := strings.Join(rules, ","); got != tt.want {
					t.Errorf("Decide(%s) rules = %q, want %q; attestations %+v; findings %+v", tt.name, got, tt.want, pv.Attestations, vd.Images[0].Findings)
				}
			})
		}
	}
}

func TestVerifyTamperedAttestation(t *testing.T) {
	key := newKey(t, "ed25519")
	reg := newTestRegistry(t, false)
	ref, d := reg.pushImage(t, "acme/shop:1")
	env := string(envelope(t, key.signer, statement(SLSAv1, builderID, sourceURI, time.Now().Add(-time.Hour), d)))
	// Swap the payload for another statement, keeping the signature.
	forged := envelope(t, newKey(t, "ed25519").signer, statement(SLSAv1, "https://evil.example/builder", sourceURI, time.Now().Add(-time.Hour), d))
	env = env[:strings.Index(env, `"payload":`)] + string(forged)[strings.Index(string(forged), `"payload":`):strings.Index(string(forged), `,"signatures"`)] + env[strings.Index(env, `,"signatures"`):]
	reg.attach(t, "acme/shop", d, true, false, layer{[]byte(env), nil})
	v, _ := newVerifier(t)
	p := compile(t, policy.Spec{Signatures: policy.Signatures{Keys: []string{key.pem}, IgnoreTlog: true}, Provenance: policy.ProvenanceRequirements{Required: true}})
	rules, pv, _ := decide(t, v, ref.String(), nil, p, time.Now())
	if got := strings.Join(rules, ","); got != "missing-provenance" || len(pv.Attestations) != 1 || pv.Attestations[0].Verified {
		t.Errorf("Decide(tampered attestation) = %q, %+v, want missing-provenance and one unverified attestation", got, pv.Attestations)
	}
}

func TestVerifyIndex(t *testing.T) {
	key := newKey(t, "ecdsa")
	tests := []struct {
		on        policy.SignaturesOn
		signIndex bool
		signKids  int // how many children are signed
		want      string
	}{
		{policy.SignaturesOnEither, true, 0, ""},
		{policy.SignaturesOnEither, false, 2, ""},
		{policy.SignaturesOnEither, false, 1, "unsigned"},
		{policy.SignaturesOnEach, true, 1, "unsigned"},
		{policy.SignaturesOnEach, false, 2, ""},
		{policy.SignaturesOnIndex, false, 2, "unsigned"},
		{policy.SignaturesOnIndex, true, 0, ""},
	}
	for _, tt := range tests {
		reg := newTestRegistry(t, false)
		ref, d, kids := reg.pushIndex(t, "acme/multi:1", 2)
		signDigest := func(h v1.Hash) {
			payload := simpleSigning(reg.host+"/acme/multi", h)
			reg.attach(t, "acme/multi", h, false, false, layer{payload, map[string]string{annSignature: sign(t, key.signer, payload)}})
		}
		if tt.signIndex {
			signDigest(d)
		}
		for _, k := range kids[:tt.signKids] {
			signDigest(k)
		}
		v, _ := newVerifier(t)
		p := compile(t, policy.Spec{Signatures: policy.Signatures{Required: true, On: tt.on, Keys: []string{key.pem}, IgnoreTlog: true}})
		rules, pv, vd := decide(t, v, ref.String(), nil, p, time.Now())
		if got := strings.Join(rules, ","); got != tt.want {
			t.Errorf("Decide(on=%s index=%v children=%d) = %q, want %q; %+v; %+v", tt.on, tt.signIndex, tt.signKids, got, tt.want, pv.Signatures, vd.Images[0].Findings)
		}
		if tt.want == "unsigned" && tt.on == policy.SignaturesOnEither {
			ev := vd.Images[0].Findings[0].Evidence["unsignedDigests"].([]string)
			if len(ev) != 1 || !strings.HasPrefix(ev[0], kids[1].String()) {
				t.Errorf("unsignedDigests = %v, want the unsigned child %s", ev, kids[1])
			}
		}
	}
}

// TestRoundTrips counts registry requests: discovery costs one request
// with the referrers API, fetching costs one manifest and one blob per
// signature or attestation, N keys never multiply pulls, and a second
// verification costs nothing.
func TestRoundTrips(t *testing.T) {
	keys := []keyPair{newKey(t, "ecdsa"), newKey(t, "ecdsa"), newKey(t, "ecdsa"), newKey(t, "rsa")}
	var pems []string
	for _, k := range keys {
		pems = append(pems, k.pem)
	}
	for _, referrer := range []bool{true, false} {
		reg := newTestRegistry(t, referrer)
		ref, d := reg.pushImage(t, "acme/shop:1")
		// M=3 signatures by keys the policy does not list first, and one attestation.
		var sigs []layer
		for _, k := range []keyPair{newKey(t, "ecdsa"), newKey(t, "ecdsa"), keys[3]} {
			payload := simpleSigning(reg.host+"/acme/shop", d)
			sigs = append(sigs, layer{payload, map[string]string{annSignature: sign(t, k.signer, payload)}})
		}
		if referrer {
			for _, l := range sigs {
				reg.attach(t, "acme/shop", d, false, true, l)
			}
		} else {
			reg.attach(t, "acme/shop", d, false, false, sigs...) // one .sig manifest, a layer per signature
		}
		reg.attach(t, "acme/shop", d, true, referrer, layer{envelope(t, keys[0].signer, statement(SLSAv1, builderID, sourceURI, time.Now().Add(-time.Hour), d)), nil})
		c := registry.New(registry.WithTransport(http.DefaultTransport))
		img, err := c.Resolve(context.Background(), req(t, ref.String()))
		if err != nil {
			t.Fatal(err)
		}
		prom := prometheus.NewRegistry()
		v := New(c, WithRegisterer(prom))
		p := compile(t, policy.Spec{Signatures: policy.Signatures{Required: true, Keys: pems, IgnoreTlog: true}, Provenance: policy.ProvenanceRequirements{Required: true}})
		reg.reset()
		start := time.Now()
		pv := v.Verify(context.Background(), req(t, ref.String()), img, p)
		cold := time.Since(start)
		reqs := reg.requests()
		var discovery, manifests, blobs int
		for _, r := range reqs {
			switch {
			case strings.Contains(r, "/referrers/") || strings.Contains(r, ".sig") || strings.Contains(r, ".att") || strings.HasSuffix(r, strings.Replace(d.String(), ":", "-", 1)):
				discovery++
			case strings.Contains(r, "/manifests/"):
				manifests++
			case strings.Contains(r, "/blobs/"):
				blobs++
			}
		}
		verified := 0
		for _, s := range pv.Signatures {
			if s.Verified {
				verified++
			}
		}
		if verified != 1 || len(pv.Signatures) != 3 || len(pv.Attestations) != 1 || !pv.Attestations[0].Verified {
			t.Fatalf("Verify = %+v, want 1 of 3 signatures and the attestation verified", pv)
		}
		// 4 artifacts with the referrers API: 3 signature manifests + 1
		// attestation manifest; with tags, 1 .sig and 1 .att manifest.
		wantDiscovery, wantManifests := 1, 4
		if !referrer {
			// referrers API absent (404), the referrers fallback tag (404), .sig, .att
			wantDiscovery, wantManifests = 4, 0
		}
		if discovery != wantDiscovery || manifests != wantManifests || blobs != 4 {
			t.Errorf("referrers=%v: requests = %d discovery, %d manifests, %d blobs, want %d, %d, 4 (N=4 keys × M=3 signatures): %v", referrer, discovery, manifests, blobs, wantDiscovery, wantManifests, reqs)
		}
		reg.reset()
		start = time.Now()
		v.Verify(context.Background(), req(t, ref.String()), img, p)
		warm := time.Since(start)
		if n := len(reg.requests()); n != 0 {
			t.Errorf("second Verify made %d requests, want 0", n)
		}
		t.Logf("referrers=%v: cold %v (%d requests), warm %v", referrer, cold, len(reqs), warm)
		// Both verifications are measured.
		mfs, err := prom.Gather()
		if err != nil || len(mfs) != 1 || mfs[0].GetName() != "buildguard_provenance_verification_duration_seconds" ||
			mfs[0].GetMetric()[0].GetHistogram().GetSampleCount() != 2 {
			t.Errorf("gathered %v (%v), want buildguard_provenance_verification_duration_seconds with 2 observations", mfs, err)
		}
	}
}

func TestTrustConfigError(t *testing.T) {
	reg := newTestRegistry(t, false)
	ref, _ := reg.pushImage(t, "acme/shop:1")
	v, _ := newVerifier(t)
	p := compile(t, policy.Spec{Signatures: policy.Signatures{Required: true, Keys: []string{"/nonexistent/cosign.pub"}, IgnoreTlog: true}})
	rules, pv, _ := decide(t, v, ref.String(), nil, p, time.Now())
	if pv.Err == nil || pv.Err.Kind != policy.ErrTrustConfig || strings.Join(rules, ",") != "untrusted-signer" {
		t.Errorf("Verify(missing key file) = %+v, rules %v; want a trust-config error and untrusted-signer", pv.Err, rules)
	}
}

// TestVerifyAttestationsTlog: cosign attestations verified with their
// transparency-log proof (a Rekor SET over a "dsse" entry, in the
// bundle annotation), not ignoreTlog.
func TestVerifyAttestationsTlog(t *testing.T) {
	ss, otherLog := newSigstore(t), newSigstore(t)
	key := newKey(t, "ecdsa")
	now := time.Now()
	logged := now.Add(-4 * time.Minute)
	keyless := []policy.KeylessIdentity{{Issuer: ghIssuer, Subject: ghSubject}}
	prov := policy.ProvenanceRequirements{Required: true, Builders: []string{"https://github.com/slsa-framework/**"}, Sources: []string{"github.com/acme/*"}}
	type att func(t *testing.T, d v1.Hash) layer
	keyAtt := func(log *sigstore, set bool, entryFor func(d v1.Hash) []byte) att {
		return func(t *testing.T, d v1.Hash) layer {
			env := envelope(t, key.signer, statement(SLSAv1, builderID, sourceURI, now.Add(-time.Hour), d))
			ann := map[string]string{}
			if set {
				logged := env
				if entryFor != nil {
					logged = entryFor(d)
				}
				ann[annBundle] = log.cosignBundle(t, dsseBody(t, logged, key.pem), now.Add(-time.Minute))
			}
			return layer{env, ann}
		}
	}
	certAtt := func(notBefore time.Time) att {
		return func(t *testing.T, d v1.Hash) layer {
			s, cert, chain := ss.leaf(t, ghSubject, ghIssuer, notBefore)
			env := envelope(t, s, statement(SLSAv02, builderID, sourceURI, now.Add(-time.Hour), d))
			return layer{env, map[string]string{annCertificate: cert, annChain: chain, annBundle: ss.cosignBundle(t, dsseBody(t, env, cert), logged)}}
		}
	}
	tests := []struct {
		name string
		sig  policy.Signatures
		att  att
		want string
	}{
		{"key with SET", policy.Signatures{Keys: []string{key.pem}, TrustedRoot: ss.trustedRootPath}, keyAtt(ss, true, nil), ""},
		{"key without SET", policy.Signatures{Keys: []string{key.pem}, TrustedRoot: ss.trustedRootPath}, keyAtt(ss, false, nil), "missing-provenance"},
		{"SET from an untrusted log", policy.Signatures{Keys: []string{key.pem}, TrustedRoot: ss.trustedRootPath}, keyAtt(otherLog, true, nil), "missing-provenance"},
		{"SET over another envelope", policy.Signatures{Keys: []string{key.pem}, TrustedRoot: ss.trustedRootPath}, keyAtt(ss, true, func(d v1.Hash) []byte {
			return envelope(t, key.signer, statement(SLSAv1, "https://evil.example/builder", sourceURI, now.Add(-time.Hour), d))
		}), "missing-provenance"},
		{"keyless with SET", policy.Signatures{Keyless: keyless, TrustedRoot: ss.trustedRootPath}, certAtt(now.Add(-5 * time.Minute)), ""},
		{"keyless certificate expired at log time", policy.Signatures{Keyless: keyless, TrustedRoot: ss.trustedRootPath}, certAtt(now.Add(-30 * time.Minute)), "missing-provenance"},
	}
	for _, referrer := range []bool{false, true} {
		for _, tt := range tests {
			t.Run(tt.name+map[bool]string{false: "/tags", true: "/referrers"}[referrer], func(t *testing.T) {
				reg := newTestRegistry(t, referrer)
				ref, d := reg.pushImage(t, "acme/shop:1")
				reg.attach(t, "acme/shop", d, true, referrer, tt.att(t, d))
				v, _ := newVerifier(t)
				rules, pv, vd := decide(t, v, ref.String(), nil, compile(t, policy.Spec{Signatures: tt.sig, Provenance: prov}), now)
				if got := strings.Join(rules, ","); got != tt.want {
					t.Errorf("Decide(%s) rules = %q, want %q; attestations %+v; findings %+v", tt.name, got, tt.want, pv.Attestations, vd.Images[0].Findings)
				}
				if len(pv.Attestations) != 1 || pv.Attestations[0].Verified != (tt.want == "") {
					t.Errorf("Verify(%s) attestations = %+v, want one, verified %v", tt.name, pv.Attestations, tt.want == "")
				}
			})
		}
	}
}

// TestTrustErrorLogged: unusable trust settings (a ClusterBuildPolicy's
// key file, say) are logged once per policy and error, and once more when
// they can be used again.
func TestTrustErrorLogged(t *testing.T) {
	reg := newTestRegistry(t, false)
	ref, _ := reg.pushImage(t, "acme/shop:1")
	keyFile := filepath.Join(t.TempDir(), "cosign.pub")
	var logs bytes.Buffer
	v, _ := newVerifier(t)
	v.Log = slog.New(slog.NewTextHandler(&logs, nil))
	spec := policy.Spec{Signatures: policy.Signatures{Required: true, Keys: []string{keyFile}, IgnoreTlog: true},
		Registries: policy.Registries{Allow: []string{"127.0.0.1:*/**"}, Insecure: []string{"127.0.0.1:*"}}}
	p, err := policy.CompileNamed("require-signatures", spec)
	if err != nil {
		t.Fatal(err)
	}
	img, err := registry.New(registry.WithTransport(http.DefaultTransport)).Resolve(context.Background(), req(t, ref.String()))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		v.Verify(context.Background(), req(t, ref.String()), img, p)
	}
	if err := os.WriteFile(keyFile, []byte(newKey(t, "ecdsa").pem), 0o644); err != nil {
		t.Fatal(err)
	}
	v.Verify(context.Background(), req(t, ref.String()), img, p)
	got := logs.String()
	if n := strings.Count(got, "policy trust settings unusable"); n != 1 || !strings.Contains(got, "policy=require-signatures") || !strings.Contains(got, keyFile) || !strings.Contains(got, "verified again") {
		t.Errorf("logs after 3 failing and 1 good verification:\n%s\nwant one error naming the policy and %s, then the recovery", got, keyFile)
	}
}
