package provenance

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/digitorus/timestamp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"

	"buildguard.dev/buildguard/policy"
)

// testTSA is an RFC 3161 timestamping authority.
type testTSA struct {
	root, leaf *x509.Certificate
	key        *ecdsa.PrivateKey
}

var oidExtKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 37}

func newTestTSA(t testing.TB, now time.Time) *testTSA {
	t.Helper()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(10), Subject: pkix.Name{CommonName: "test TSA root", Organization: []string{"tsa.test"}},
		NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	tsa := &testTSA{}
	tsa.root, _ = x509.ParseCertificate(der)
	tsa.key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	// RFC 3161: the one extended key usage, timestamping, critical.
	eku, _ := asn1.Marshal([]asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 8}})
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(11), Subject: pkix.Name{CommonName: "test TSA", Organization: []string{"tsa.test"}},
		NotBefore: now.Add(-47 * time.Hour), NotAfter: now.Add(47 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtraExtensions: []pkix.Extension{{Id: oidExtKeyUsage, Critical: true, Value: eku}}}
	der, err = x509.CreateCertificate(rand.Reader, leafTmpl, tsa.root, tsa.key.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	tsa.leaf, _ = x509.ParseCertificate(der)
	return tsa
}

// stamp is an RFC 3161 timestamp response over sig, dated at.
func (tsa *testTSA) stamp(t testing.TB, sig []byte, at time.Time) []byte {
	t.Helper()
	h := sha256.Sum256(sig)
	ts := timestamp.Timestamp{HashAlgorithm: crypto.SHA256, HashedMessage: h[:], Time: at, Policy: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 2}, AddTSACertificate: true}
	resp, err := ts.CreateResponseWithOpts(tsa.leaf, tsa.key, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// Fulcio's extensions for GitHub Actions (DER-encoded UTF8Strings).
var (
	oidIssuerV2         = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 8}
	oidRunnerEnv        = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 11}
	oidSourceRepository = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 12}
	oidSourceRef        = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 14}
)

func derString(t testing.TB, s string) []byte {
	b, err := asn1.MarshalWithParams(s, "utf8")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// githubSigner issues a Fulcio-like certificate to a GitHub Actions
// workflow (subject san) with the given claims, valid from notBefore for
// ten minutes.
func (ss *sigstore) githubSigner(t testing.TB, san string, c policy.GitHubClaims, notBefore time.Time) bundleSigner {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(san)
	tmpl := &x509.Certificate{SerialNumber: nextSerial(), NotBefore: notBefore, NotAfter: notBefore.Add(10 * time.Minute),
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		ExtraExtensions: []pkix.Extension{
			{Id: oidIssuerV2, Value: derString(t, ghIssuer)},
			{Id: oidSourceRepository, Value: derString(t, c.SourceRepository)},
			{Id: oidSourceRef, Value: derString(t, c.SourceRef)},
			{Id: oidRunnerEnv, Value: derString(t, c.RunnerEnvironment)},
		}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ss.inter, key.Public(), ss.interKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	certPEM, _ := cryptoutils.MarshalCertificateToPEM(cert)
	s, _ := signature.LoadSigner(key, crypto.SHA256)
	return bundleSigner{signer: s, pubPEM: string(certPEM), certDER: der}
}

// stampedBundle is a DSSE bundle of statement st, with a transparency-log
// entry at logged (none when zero) and an RFC 3161 timestamp at stamped
// from tsa (none when nil).
func (ss *sigstore) stampedBundle(t testing.TB, bs bundleSigner, st []byte, logged time.Time, tsa *testTSA, stamped time.Time) []byte {
	t.Helper()
	env := envelope(t, bs.signer, st)
	var tlog []map[string]any
	if !logged.IsZero() {
		tlog = append(tlog, ss.tlogEntry(t, "dsse", dsseBody(t, env, bs.pubPEM), logged))
	}
	var e map[string]any
	if err := json.Unmarshal(env, &e); err != nil {
		t.Fatal(err)
	}
	vm := bs.material(tlog)
	if tsa != nil {
		sig, _ := base64.StdEncoding.DecodeString(e["signatures"].([]any)[0].(map[string]any)["sig"].(string))
		vm["timestampVerificationData"] = map[string]any{"rfc3161Timestamps": []map[string]any{{"signedTimestamp": base64.StdEncoding.EncodeToString(tsa.stamp(t, sig, stamped))}}}
	}
	b, err := json.Marshal(map[string]any{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial": vm, "dsseEnvelope": e})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeJSONL writes trusted roots as `gh attestation trusted-root` does:
// one JSON document per line.
func writeJSONL(t testing.TB, roots ...*sigstore) string {
	t.Helper()
	var b bytes.Buffer
	for _, r := range roots {
		var compact bytes.Buffer
		if err := json.Compact(&compact, r.trustedRootJSON); err != nil {
			t.Fatal(err)
		}
		b.Write(compact.Bytes())
		b.WriteByte('\n')
	}
	p := filepath.Join(t.TempDir(), "trusted_root.jsonl")
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestVerifyTimestampedBundles: bundles of GitHub's own Sigstore instance
// (an RFC 3161 timestamp, no transparency-log entry) verify against the
// instance's timestamping authority; bundles with both proofs are checked
// on both; each certificate against the instance that issued it.
func TestVerifyTimestampedBundles(t *testing.T) {
	publicGood := newSigstoreInstance(t, true, true)
	github := newSigstoreInstance(t, false, true)
	both := writeJSONL(t, publicGood, github)
	now := time.Now()
	signedAt := now.Add(-90 * time.Second).Truncate(time.Second)
	claims := policy.GitHubClaims{SourceRepository: "https://github.com/acme/shop", SourceRef: "refs/heads/main", RunnerEnvironment: "github-hosted"}
	const wf = "https://github.com/acme/shop/.github/workflows/release.yml@refs/heads/main"
	id := []policy.GitHubIdentity{{Repository: "acme/shop", DenySelfHostedRunners: true}}
	// Provenance without a finish time: the signature's proofs date it.
	slsa := func(d v1.Hash) []byte {
		return []byte(`{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"img","digest":{"sha256":"` + d.Hex + `"}}],"predicateType":"` + SLSAv1 +
			`","predicate":{"buildDefinition":{"buildType":"https://example/build","externalParameters":{}},"runDetails":{"builder":{"id":"` + builderID + `"}}}}`)
	}
	tests := []struct {
		name     string
		root     string
		bundle   func(t *testing.T, d v1.Hash) []byte
		verified bool
		source   string
		errHas   string
	}{
		{"GitHub instance: timestamp, no log", both, func(t *testing.T, d v1.Hash) []byte {
			return github.stampedBundle(t, github.githubSigner(t, wf, claims, now.Add(-2*time.Minute)), slsa(d), time.Time{}, github.tsa, signedAt)
		}, true, policy.TimeSourceTimestampAuthority, ""},
		{"GitHub instance alone, not JSON Lines", github.trustedRootPath, func(t *testing.T, d v1.Hash) []byte {
			return github.stampedBundle(t, github.githubSigner(t, wf, claims, now.Add(-2*time.Minute)), slsa(d), time.Time{}, github.tsa, signedAt)
		}, true, policy.TimeSourceTimestampAuthority, ""},
		{"GitHub instance: no timestamp", both, func(t *testing.T, d v1.Hash) []byte {
			return github.stampedBundle(t, github.githubSigner(t, wf, claims, now.Add(-2*time.Minute)), slsa(d), time.Time{}, nil, time.Time{})
		}, false, "", "no RFC 3161 timestamp"},
		{"GitHub instance: another authority's timestamp", both, func(t *testing.T, d v1.Hash) []byte {
			return github.stampedBundle(t, github.githubSigner(t, wf, claims, now.Add(-2*time.Minute)), slsa(d), time.Time{}, publicGood.tsa, signedAt)
		}, false, "", "timestamp"},
		{"GitHub instance: certificate expired when stamped", both, func(t *testing.T, d v1.Hash) []byte {
			return github.stampedBundle(t, github.githubSigner(t, wf, claims, now.Add(-30*time.Minute)), slsa(d), time.Time{}, github.tsa, signedAt)
		}, false, "", "certificate"},
		{"public-good instance: timestamp without the log it has", both, func(t *testing.T, d v1.Hash) []byte {
			return publicGood.stampedBundle(t, publicGood.githubSigner(t, wf, claims, now.Add(-2*time.Minute)), slsa(d), time.Time{}, publicGood.tsa, signedAt)
		}, false, "", "no transparency-log entry"},
		{"public-good instance: log and timestamp, both checked", both, func(t *testing.T, d v1.Hash) []byte {
			return publicGood.stampedBundle(t, publicGood.githubSigner(t, wf, claims, now.Add(-2*time.Minute)), slsa(d), signedAt.Add(30*time.Second), publicGood.tsa, signedAt)
		}, true, policy.TimeSourceTimestampAuthority, ""},
		{"public-good instance: log, and a timestamp of another authority", both, func(t *testing.T, d v1.Hash) []byte {
			return publicGood.stampedBundle(t, publicGood.githubSigner(t, wf, claims, now.Add(-2*time.Minute)), slsa(d), signedAt, github.tsa, signedAt)
		}, false, "", "timestamp"},
		{"public-good instance: log only", both, func(t *testing.T, d v1.Hash) []byte {
			return publicGood.stampedBundle(t, publicGood.githubSigner(t, wf, claims, now.Add(-2*time.Minute)), slsa(d), signedAt, nil, time.Time{})
		}, true, policy.TimeSourceTransparencyLog, ""},
		{"a CA of no instance", both, func(t *testing.T, d v1.Hash) []byte {
			other := newSigstoreInstance(t, false, true)
			return other.stampedBundle(t, other.githubSigner(t, wf, claims, now.Add(-2*time.Minute)), slsa(d), time.Time{}, github.tsa, signedAt)
		}, false, "", "chains to no Fulcio CA"},
		{"self-hosted runner", both, func(t *testing.T, d v1.Hash) []byte {
			c := claims
			c.RunnerEnvironment = "self-hosted"
			return github.stampedBundle(t, github.githubSigner(t, wf, c, now.Add(-2*time.Minute)), slsa(d), time.Time{}, github.tsa, signedAt)
		}, false, "", "self-hosted"},
		{"another repository", both, func(t *testing.T, d v1.Hash) []byte {
			c := claims
			c.SourceRepository = "https://github.com/evil/shop"
			return github.stampedBundle(t, github.githubSigner(t, "https://github.com/evil/shop/.github/workflows/release.yml@refs/heads/main", c, now.Add(-2*time.Minute)), slsa(d), time.Time{}, github.tsa, signedAt)
		}, false, "", "signed by"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := newTestRegistry(t, true)
			ref, d := reg.pushImage(t, "acme/shop:1")
			reg.attachBundle(t, "acme/shop", d, tt.bundle(t, d))
			v, _ := newVerifier(t)
			spec := policy.Spec{Signatures: policy.Signatures{GitHub: id, TrustedRoot: tt.root}, Provenance: policy.ProvenanceRequirements{Required: true}}
			rules, pv, vd := decide(t, v, ref.String(), nil, compile(t, spec), now.Add(time.Hour))
			if len(pv.Attestations) != 1 {
				t.Fatalf("Verify = %+v, want one attestation", pv)
			}
			a := pv.Attestations[0]
			if a.Verified != tt.verified {
				t.Fatalf("attestation verified = %v (%s), want %v; rules %v %+v", a.Verified, a.Error, tt.verified, rules, vd.Images[0].Findings)
			}
			if !tt.verified {
				if !strings.Contains(a.Error, tt.errHas) || strings.Join(rules, ",") != "missing-provenance" {
					t.Errorf("error %q, rules %v, want an error saying %q and missing-provenance", a.Error, rules, tt.errHas)
				}
				return
			}
			if a.SignedAtSource != tt.source || !a.SignedAt.Equal(signedAt) {
				t.Errorf("signed at %v by %s, want %v by %s", a.SignedAt, a.SignedAtSource, signedAt, tt.source)
			}
			if a.GitHub == nil || a.GitHub.SourceRepository != claims.SourceRepository || a.GitHub.RunnerEnvironment != "github-hosted" || a.GitHub.SignerWorkflow != wf {
				t.Errorf("GitHub claims %+v, want %+v signed by %s", a.GitHub, claims, wf)
			}
			// Judged when it was timestamped, it is fresh by that time.
			_, _, vd = decide(t, v, ref.String(), nil, compile(t, spec), signedAt.Add(time.Minute))
			if f := vd.Images[0].Findings; len(f) != 1 || f[0].Rule != policy.RuleFreshImage || f[0].Evidence["timeSource"] != tt.source {
				t.Errorf("findings a minute after signing = %+v, want fresh-image by %s", f, tt.source)
			}
		})
	}
}

// ghData is GitHub's public test data (testdata/github/README.md).
func ghData(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "github", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestGitHubTrustedRootFile: the trusted roots `gh attestation
// trusted-root` wrote hold two instances, kept apart; the checked-in copy
// is intact (every certificate is signed by the next one of its chain,
// every ECDSA log key is named by its hash).
func TestGitHubTrustedRootFile(t *testing.T) {
	roots, err := ParseTrustedRoots(ghData(t, "trusted_root.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(roots) != 2 {
		t.Fatalf("ParseTrustedRoots = %d instances, want 2", len(roots))
	}
	pg, gh := roots[0], roots[1]
	if len(pg.RekorLogs()) != 2 || len(pg.CTLogs()) != 2 || len(pg.TimestampingAuthorities()) != 1 || len(pg.FulcioCertificateAuthorities()) != 2 {
		t.Errorf("public-good instance: %d logs, %d CT logs, %d TSAs, %d CAs; want 2, 2, 1, 2",
			len(pg.RekorLogs()), len(pg.CTLogs()), len(pg.TimestampingAuthorities()), len(pg.FulcioCertificateAuthorities()))
	}
	if len(gh.RekorLogs()) != 0 || len(gh.TimestampingAuthorities()) != 5 || len(gh.FulcioCertificateAuthorities()) != 5 {
		t.Errorf("GitHub instance: %d logs, %d TSAs, %d CAs; want 0, 5, 5", len(gh.RekorLogs()), len(gh.TimestampingAuthorities()), len(gh.FulcioCertificateAuthorities()))
	}
	type trLog struct {
		PublicKey struct {
			RawBytes   []byte `json:"rawBytes"`
			KeyDetails string `json:"keyDetails"`
		} `json:"publicKey"`
		LogID struct {
			KeyID []byte `json:"keyId"`
		} `json:"logId"`
	}
	type trChain struct {
		CertChain struct {
			Certificates []struct {
				RawBytes []byte `json:"rawBytes"`
			} `json:"certificates"`
		} `json:"certChain"`
	}
	type trDoc struct {
		Tlogs  []trLog   `json:"tlogs"`
		CTLogs []trLog   `json:"ctlogs"`
		CAs    []trChain `json:"certificateAuthorities"`
		TSAs   []trChain `json:"timestampAuthorities"`
	}
	certs := 0
	for _, line := range bytes.Split(bytes.TrimSpace(ghData(t, "trusted_root.jsonl")), []byte("\n")) {
		var doc trDoc
		if err := json.Unmarshal(line, &doc); err != nil {
			t.Fatal(err)
		}
		for _, l := range append(doc.Tlogs, doc.CTLogs...) {
			if l.PublicKey.KeyDetails == "PKIX_ED25519" {
				continue // a Rekor v2 log: its ID is not the key's hash
			}
			if h := sha256.Sum256(l.PublicKey.RawBytes); !bytes.Equal(h[:], l.LogID.KeyID) {
				t.Errorf("log key %s is not named by its hash %s", hex.EncodeToString(l.LogID.KeyID), hex.EncodeToString(h[:]))
			}
		}
		for _, ch := range append(doc.CAs, doc.TSAs...) {
			var parsed []*x509.Certificate
			for _, c := range ch.CertChain.Certificates {
				cert, err := x509.ParseCertificate(c.RawBytes)
				if err != nil {
					t.Fatalf("certificate does not parse: %v", err)
				}
				parsed = append(parsed, cert)
			}
			for i, c := range parsed {
				issuer := c
				if i+1 < len(parsed) {
					issuer = parsed[i+1]
				}
				if err := c.CheckSignatureFrom(issuer); err != nil {
					t.Errorf("certificate %q is not signed by %q: %v", c.Subject, issuer.Subject, err)
				}
				certs++
			}
		}
	}
	if certs < 30 {
		t.Errorf("checked %d certificates, want every one of the file", certs)
	}
}

// TestRealGitHubBundles verifies bundles GitHub produced (the gh CLI's
// test data) against the trusted roots `gh attestation trusted-root`
// wrote, offline: a release attestation of GitHub's own instance (an
// RFC 3161 timestamp, no transparency-log entry) and an attestation of a
// reusable workflow on the public-good instance (Rekor entry with its
// inclusion proof, SCT), matched on the certificate's GitHub claims.
func TestRealGitHubBundles(t *testing.T) {
	jsonl := filepath.Join("testdata", "github", "trusted_root.jsonl")
	publicGoodOnly := filepath.Join(t.TempDir(), "public-good.json")
	if err := os.WriteFile(publicGoodOnly, bytes.SplitN(ghData(t, "trusted_root.jsonl"), []byte("\n"), 2)[0], 0o644); err != nil {
		t.Fatal(err)
	}
	release := ghData(t, "github_release_bundle.json")
	reusable := ghData(t, "reusable-workflow-attestation.sigstore.json")
	releaseDigest := v1.Hash{Algorithm: "sha256", Hex: "e15b593c6ab8d7725a3cc82226ef816cac6bf9c70eed383bd459295cc65f5ec3"}  // artifact.zip
	reusableDigest := v1.Hash{Algorithm: "sha256", Hex: "07e4b8c0e3580b3e4a1eb62c70f1ffb86004d3d94f50767cb404fa7a639b4d05"} // the wheel
	releaseSigner := []policy.KeylessIdentity{{IssuerRegExp: "^$", Subject: "https://dotcom.releases.github.com"}}
	const reusableWF = "bdehamer/workflows/.github/workflows/attest.yml"
	tamper := func(b []byte, old, new string) []byte { return bytes.Replace(b, []byte(old), []byte(new), 1) }
	tests := []struct {
		name     string
		root     string
		keyless  []policy.KeylessIdentity
		github   []policy.GitHubIdentity
		bundle   []byte
		digest   v1.Hash
		signedAt string
		source   string
		errHas   string
	}{
		{"release attestation, GitHub instance, RFC 3161 timestamp only", jsonl, releaseSigner, nil, release, releaseDigest,
			"2025-05-30T20:13:39Z", policy.TimeSourceTimestampAuthority, ""},
		{"release attestation against the public-good instance alone", publicGoodOnly, releaseSigner, nil, release, releaseDigest, "", "", "chains to no Fulcio CA"},
		{"release attestation, another artifact", jsonl, releaseSigner, nil, release, reusableDigest, "", "", "digest"},
		{"release attestation, another signer", jsonl, []policy.KeylessIdentity{{IssuerRegExp: "^$", Subject: "https://github.com/acme"}}, nil, release, releaseDigest, "", "", "matches no trusted identity"},
		{"release attestation, timestamp altered", jsonl, releaseSigner, nil, tamper(release, "MIIC0DADAgEAMIICxwYJ", "MIIC0DADAgEAMIICxwYK"), releaseDigest, "", "", "timestamp"},
		{"reusable workflow, public-good instance", jsonl, nil, []policy.GitHubIdentity{{Repository: "malancas/attest-demo", SignerWorkflow: reusableWF, SourceRef: "refs/heads/main", DenySelfHostedRunners: true}},
			reusable, reusableDigest, "2024-05-21T22:56:17Z", policy.TimeSourceTransparencyLog, ""},
		{"reusable workflow, by owner and signer repository", jsonl, nil, []policy.GitHubIdentity{{Owner: "malancas", SignerRepository: "bdehamer/workflows"}},
			reusable, reusableDigest, "2024-05-21T22:56:17Z", policy.TimeSourceTransparencyLog, ""},
		{"reusable workflow, signer not named: the source repository's own workflows only", jsonl, nil, []policy.GitHubIdentity{{Repository: "malancas/attest-demo"}},
			reusable, reusableDigest, "", "", "signed by"},
		{"reusable workflow, another owner", jsonl, nil, []policy.GitHubIdentity{{Owner: "acme", SignerRepository: "bdehamer/workflows"}},
			reusable, reusableDigest, "", "", "not owned by acme"},
		{"reusable workflow, another ref", jsonl, nil, []policy.GitHubIdentity{{Repository: "malancas/attest-demo", SignerWorkflow: reusableWF, SourceRef: "refs/tags/v*"}},
			reusable, reusableDigest, "", "", "source ref"},
		{"reusable workflow, statement altered", jsonl, nil, []policy.GitHubIdentity{{Owner: "malancas", SignerRepository: "bdehamer/workflows"}},
			tamper(reusable, "eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEiLCJzdWJqZWN0Ijpb", "eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjIiLCJzdWJqZWN0Ijpb"),
			reusableDigest, "", "", "verify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := policy.Spec{Signatures: policy.Signatures{Keyless: tt.keyless, GitHub: tt.github, TrustedRoot: tt.root}}
			p, err := policy.Compile(spec)
			if err != nil {
				t.Fatal(err)
			}
			tr, err := loadTrust(p.Trust())
			if err != nil {
				t.Fatal(err)
			}
			r, err := tr.verifyBundle(tt.bundle, tt.digest)
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("verifyBundle = %v, want an error saying %q", err, tt.errHas)
				}
				return
			}
			if err != nil {
				t.Fatalf("verifyBundle: %v", err)
			}
			if got := r.signedAt.Format(time.RFC3339); got != tt.signedAt || r.source != tt.source {
				t.Errorf("signed at %s by %s, want %s by %s", got, r.source, tt.signedAt, tt.source)
			}
			if tt.github != nil && (r.github == nil || r.github.SourceRepository != "https://github.com/malancas/attest-demo" || r.github.RunnerEnvironment != "github-hosted" ||
				r.github.SignerWorkflow != "https://github.com/"+reusableWF+"@refs/heads/main") {
				t.Errorf("GitHub claims = %+v", r.github)
			}
		})
	}
	// The statement of the reusable workflow's bundle, as buildguard reads it.
	b, err := parseBundle(reusable)
	if err != nil {
		t.Fatal(err)
	}
	st, err := ParseStatement(b.GetDsseEnvelope().GetPayload())
	if err != nil || st.BuilderID != "https://github.com/actions/runner/github-hosted" || !contains(st.Sources, "git+https://github.com/malancas/attest-demo@refs/heads/main") {
		t.Errorf("ParseStatement = %+v, %v", st, err)
	}
}
