package provenance

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cyberphone/json-canonicalization/go/src/webpki.org/jsoncanonicalizer"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/options"

	"buildguard.dev/buildguard/policy"
)

// dsseBody is the canonical body of a Rekor "dsse" v0.0.1 entry for the
// DSSE envelope env, signed by the key or certificate in pubPEM.
func dsseBody(t testing.TB, env []byte, pubPEM string) string {
	t.Helper()
	var e struct {
		Payload    string `json:"payload"`
		Signatures []struct {
			Sig string `json:"sig"`
		} `json:"signatures"`
	}
	if err := json.Unmarshal(env, &e); err != nil {
		t.Fatal(err)
	}
	payload, _ := base64.StdEncoding.DecodeString(e.Payload)
	eh, ph := sha256.Sum256(env), sha256.Sum256(payload)
	return fmt.Sprintf(`{"apiVersion":"0.0.1","kind":"dsse","spec":{"envelopeHash":{"algorithm":"sha256","value":%q},"payloadHash":{"algorithm":"sha256","value":%q},"signatures":[{"signature":%q,"verifier":%q}]}}`,
		hex.EncodeToString(eh[:]), hex.EncodeToString(ph[:]), e.Signatures[0].Sig, base64.StdEncoding.EncodeToString([]byte(pubPEM)))
}

// hashedRekordBody is the canonical body of a Rekor "hashedrekord" v0.0.1
// entry for a signature b64sig over the SHA-256 digest hexDigest.
func hashedRekordBody(hexDigest, b64sig, pubPEM string) string {
	return fmt.Sprintf(`{"apiVersion":"0.0.1","kind":"hashedrekord","spec":{"data":{"hash":{"algorithm":"sha256","value":%q}},"signature":{"content":%q,"publicKey":{"content":%q}}}}`,
		hexDigest, b64sig, base64.StdEncoding.EncodeToString([]byte(pubPEM)))
}

// signedEntry signs a Rekor entry with body, integrated at when: the SET
// payload, its signature, and the entry's log index.
func (ss *sigstore) signedEntry(t testing.TB, body string, when time.Time) (map[string]any, []byte, int64) {
	t.Helper()
	ss.logIndex++
	p := map[string]any{"body": base64.StdEncoding.EncodeToString([]byte(body)), "integratedTime": when.Unix(), "logIndex": ss.logIndex, "logID": hex.EncodeToString(ss.logID)}
	raw, _ := json.Marshal(p)
	canon, err := jsoncanonicalizer.Transform(raw)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(canon)
	set, err := ecdsa.SignASN1(rand.Reader, ss.rekorKey, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return p, set, ss.logIndex
}

// cosignBundle is the cosign bundle annotation (a Rekor SET) of an entry
// with body, integrated at when.
func (ss *sigstore) cosignBundle(t testing.TB, body string, when time.Time) string {
	t.Helper()
	p, set, _ := ss.signedEntry(t, body, when)
	b, _ := json.Marshal(map[string]any{"SignedEntryTimestamp": set, "Payload": p})
	return string(b)
}

// tlogEntry is a Sigstore bundle's transparency-log entry for body (of
// kind, version 0.0.1), integrated at when: a SET and an inclusion proof
// in a one-leaf tree whose checkpoint the test Rekor key signs.
func (ss *sigstore) tlogEntry(t testing.TB, kind, body string, when time.Time) map[string]any {
	t.Helper()
	_, set, index := ss.signedEntry(t, body, when)
	leaf := sha256.Sum256(append([]byte{0}, body...))
	checkpoint := ss.checkpoint(t, leaf[:])
	b64 := base64.StdEncoding.EncodeToString
	return map[string]any{
		"logIndex":          fmt.Sprint(index),
		"logId":             map[string]any{"keyId": b64(ss.logID)},
		"kindVersion":       map[string]any{"kind": kind, "version": "0.0.1"},
		"integratedTime":    fmt.Sprint(when.Unix()),
		"inclusionPromise":  map[string]any{"signedEntryTimestamp": b64(set)},
		"inclusionProof":    map[string]any{"logIndex": "0", "rootHash": b64(leaf[:]), "treeSize": "1", "hashes": []string{}, "checkpoint": map[string]any{"envelope": checkpoint}},
		"canonicalizedBody": b64([]byte(body)),
	}
}

// checkpoint is a Rekor v1 signed checkpoint (a signed note) of a
// one-leaf tree with root hash root, signed by the test Rekor key.
func (ss *sigstore) checkpoint(t testing.TB, root []byte) string {
	t.Helper()
	note := fmt.Sprintf("rekor.test - 1\n1\n%s\n", base64.StdEncoding.EncodeToString(root))
	h := sha256.Sum256([]byte(note))
	sig, err := ecdsa.SignASN1(rand.Reader, ss.rekorKey, h[:])
	if err != nil {
		t.Fatal(err)
	}
	// The signature line: the first 4 bytes of the key's SHA-256 (the
	// log ID) as a hint, then the signature.
	return note + "\n\u2014 rekor.test " + base64.StdEncoding.EncodeToString(append(ss.logID[:4:4], sig...)) + "\n"
}

// bundleSigner signs Sigstore bundles with a key or a Fulcio certificate.
type bundleSigner struct {
	signer  signature.Signer
	pubPEM  string // the key's PEM, or the certificate's
	certDER []byte // nil for a key
}

func (ss *sigstore) keylessSigner(t testing.TB, subject string, notBefore time.Time) bundleSigner {
	t.Helper()
	s, certPEM, _ := ss.leaf(t, subject, ghIssuer, notBefore)
	blk, _ := pem.Decode([]byte(certPEM))
	return bundleSigner{signer: s, pubPEM: certPEM, certDER: blk.Bytes}
}

func keySigner(k keyPair) bundleSigner { return bundleSigner{signer: k.signer, pubPEM: k.pem} }

func (b bundleSigner) material(tlog []map[string]any) map[string]any {
	vm := map[string]any{"tlogEntries": tlog}
	if b.certDER != nil {
		vm["certificate"] = map[string]any{"rawBytes": base64.StdEncoding.EncodeToString(b.certDER)}
	} else {
		vm["publicKey"] = map[string]any{"hint": "test-key"}
	}
	return vm
}

// dsseBundle is a Sigstore bundle v0.3 holding statement st in a DSSE
// envelope; logged at when unless when is zero. tamper edits the
// statement after signing.
func (ss *sigstore) dsseBundle(t testing.TB, bs bundleSigner, st []byte, when time.Time, tamper func([]byte) []byte) []byte {
	t.Helper()
	env := envelope(t, bs.signer, st)
	var tlog []map[string]any
	if !when.IsZero() {
		tlog = append(tlog, ss.tlogEntry(t, "dsse", dsseBody(t, env, bs.pubPEM), when))
	}
	var e map[string]any
	if err := json.Unmarshal(env, &e); err != nil {
		t.Fatal(err)
	}
	if tamper != nil {
		e["payload"] = base64.StdEncoding.EncodeToString(tamper(st))
	}
	b, err := json.Marshal(map[string]any{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial": bs.material(tlog), "dsseEnvelope": e})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// messageBundle is a Sigstore bundle v0.3 holding a message signature
// over the image digest d.
func (ss *sigstore) messageBundle(t testing.TB, bs bundleSigner, d v1.Hash, when time.Time) []byte {
	t.Helper()
	digest, _ := hex.DecodeString(d.Hex)
	sig, err := bs.signer.SignMessage(bytes.NewReader(nil), options.WithDigest(digest), options.WithCryptoSignerOpts(crypto.SHA256))
	if err != nil {
		t.Fatal(err)
	}
	b64sig := base64.StdEncoding.EncodeToString(sig)
	var tlog []map[string]any
	if !when.IsZero() {
		tlog = append(tlog, ss.tlogEntry(t, "hashedrekord", hashedRekordBody(d.Hex, b64sig, bs.pubPEM), when))
	}
	b, err := json.Marshal(map[string]any{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial": bs.material(tlog),
		"messageSignature": map[string]any{"messageDigest": map[string]any{"algorithm": "SHA2_256", "digest": base64.StdEncoding.EncodeToString(digest)}, "signature": b64sig}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// attachBundle pushes a Sigstore bundle as an OCI 1.1 referrer of digest,
// as actions/attest-build-provenance does.
func (r *testRegistry) attachBundle(t testing.TB, repo string, digest v1.Hash, b []byte) {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.MediaType(ArtifactTypeBundle))
	img, err := mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(b, ArtifactTypeBundle)})
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.Subject(img, v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: digest, Size: 1}).(v1.Image)
	d, _ := img.Digest()
	if err := remote.Write(r.ref(t, repo).Context().Digest(d.String()), img); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyBundles(t *testing.T) {
	ss, otherLog := newSigstore(t), newSigstore(t)
	key, otherKey := newKey(t, "ecdsa"), newKey(t, "ecdsa")
	now := time.Now()
	// Judged an hour after signing: freshness, judged on the log's time,
	// says nothing here.
	later := now.Add(time.Hour)
	finished := now.Add(-2 * time.Hour)
	keyless := []policy.KeylessIdentity{{Issuer: ghIssuer, SubjectRegExp: `^https://github.com/acme/.+/.github/workflows/release.yml@refs/tags/v.*$`}}
	prov := policy.ProvenanceRequirements{Required: true,
		Builders: []string{"https://github.com/slsa-framework/slsa-github-generator/.github/workflows/generator_container_slsa3.yml@refs/tags/v*"},
		Sources:  []string{"github.com/acme/*"}}
	other := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	good := func(t *testing.T) bundleSigner { return ss.keylessSigner(t, ghSubject, now.Add(-5*time.Minute)) }
	logged := now.Add(-4 * time.Minute)
	slsa := func(d v1.Hash) []byte { return statement(SLSAv1, builderID, sourceURI, finished, d) }
	tamper := func(st []byte) []byte {
		return bytes.Replace(st, []byte("slsa-framework"), []byte("evil-framework"), 1)
	}

	tests := []struct {
		name   string
		sig    policy.Signatures
		bundle func(t *testing.T, d v1.Hash) []byte
		want   string // rule IDs
		check  func(t *testing.T, pv *policy.Provenance)
	}{
		{"keyless SLSA provenance", policy.Signatures{Keyless: keyless, TrustedRoot: ss.trustedRootPath},
			func(t *testing.T, d v1.Hash) []byte { return ss.dsseBundle(t, good(t), slsa(d), logged, nil) }, "",
			func(t *testing.T, pv *policy.Provenance) {
				a := pv.Attestations[0]
				if !a.Verified || a.Source != "bundle" || a.BuilderID != builderID || !a.FinishedOn.Equal(finished.Truncate(time.Second).UTC()) || a.Subject != ghSubject || a.Issuer != ghIssuer || len(a.Sources) == 0 {
					t.Errorf("attestation = %+v, want verified, from the bundle, builder %s, finished %v, signed by %s", a, builderID, finished, ghSubject)
				}
			}},
		{"keyless wrong identity", policy.Signatures{Keyless: keyless, TrustedRoot: ss.trustedRootPath},
			func(t *testing.T, d v1.Hash) []byte {
				return ss.dsseBundle(t, ss.keylessSigner(t, "https://github.com/evil/x/.github/workflows/release.yml@refs/tags/v1", now.Add(-5*time.Minute)), slsa(d), logged, nil)
			}, "missing-provenance", nil},
		{"keyless tampered statement", policy.Signatures{Keyless: keyless, TrustedRoot: ss.trustedRootPath},
			func(t *testing.T, d v1.Hash) []byte { return ss.dsseBundle(t, good(t), slsa(d), logged, tamper) }, "missing-provenance", nil},
		{"keyless statement about another digest", policy.Signatures{Keyless: keyless, TrustedRoot: ss.trustedRootPath},
			func(t *testing.T, d v1.Hash) []byte { return ss.dsseBundle(t, good(t), slsa(other), logged, nil) }, "missing-provenance",
			func(t *testing.T, pv *policy.Provenance) {
				if e := pv.Attestations[0].Error; !strings.Contains(e, "statement is about "+other.String()) {
					t.Errorf("attestation error = %q, want it to name the other digest", e)
				}
			}},
		{"keyless without log entry", policy.Signatures{Keyless: keyless, TrustedRoot: ss.trustedRootPath},
			func(t *testing.T, d v1.Hash) []byte { return ss.dsseBundle(t, good(t), slsa(d), time.Time{}, nil) }, "missing-provenance", nil},
		{"keyless logged by an untrusted log", policy.Signatures{Keyless: keyless, TrustedRoot: ss.trustedRootPath},
			func(t *testing.T, d v1.Hash) []byte { return otherLog.dsseBundle(t, good(t), slsa(d), logged, nil) }, "missing-provenance", nil},
		{"keyless certificate expired at log time", policy.Signatures{Keyless: keyless, TrustedRoot: ss.trustedRootPath},
			func(t *testing.T, d v1.Hash) []byte {
				return ss.dsseBundle(t, ss.keylessSigner(t, ghSubject, now.Add(-30*time.Minute)), slsa(d), now.Add(-5*time.Minute), nil)
			}, "missing-provenance", nil},
		{"keyless unapproved builder", policy.Signatures{Keyless: keyless, TrustedRoot: ss.trustedRootPath},
			func(t *testing.T, d v1.Hash) []byte {
				return ss.dsseBundle(t, good(t), statement(SLSAv02, "https://evil.example/builder", sourceURI, finished, d), logged, nil)
			}, "unapproved-builder", nil},
		{"key with log entry", policy.Signatures{Keys: []string{otherKey.pem, key.pem}, TrustedRoot: ss.trustedRootPath},
			func(t *testing.T, d v1.Hash) []byte { return ss.dsseBundle(t, keySigner(key), slsa(d), logged, nil) }, "",
			func(t *testing.T, pv *policy.Provenance) {
				if a := pv.Attestations[0]; !a.Verified || a.KeyFingerprint != fingerprint(t, key.pem) {
					t.Errorf("attestation = %+v, want verified by %s", a, fingerprint(t, key.pem))
				}
			}},
		{"key without log entry, ignoreTlog", policy.Signatures{Keys: []string{key.pem}, IgnoreTlog: true},
			func(t *testing.T, d v1.Hash) []byte {
				return ss.dsseBundle(t, keySigner(key), slsa(d), time.Time{}, nil)
			}, "", nil},
		{"key without log entry when tlog required", policy.Signatures{Keys: []string{key.pem}, TrustedRoot: ss.trustedRootPath},
			func(t *testing.T, d v1.Hash) []byte {
				return ss.dsseBundle(t, keySigner(key), slsa(d), time.Time{}, nil)
			}, "missing-provenance", nil},
		{"wrong key", policy.Signatures{Keys: []string{otherKey.pem}, IgnoreTlog: true},
			func(t *testing.T, d v1.Hash) []byte {
				return ss.dsseBundle(t, keySigner(key), slsa(d), time.Time{}, nil)
			}, "missing-provenance", nil},
		{"key tampered statement", policy.Signatures{Keys: []string{key.pem}, IgnoreTlog: true},
			func(t *testing.T, d v1.Hash) []byte {
				return ss.dsseBundle(t, keySigner(key), slsa(d), time.Time{}, tamper)
			}, "missing-provenance", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := newTestRegistry(t, true)
			ref, d := reg.pushImage(t, "acme/shop:1")
			reg.attachBundle(t, "acme/shop", d, tt.bundle(t, d))
			v, _ := newVerifier(t)
			rules, pv, vd := decide(t, v, ref.String(), nil, compile(t, policy.Spec{Signatures: tt.sig, Provenance: prov}), later)
			if got := strings.Join(rules, ","); got != tt.want {
				t.Errorf("Decide(%s) rules = %q, want %q; attestations %+v; findings %+v", tt.name, got, tt.want, pv.Attestations, vd.Images[0].Findings)
			}
			if len(pv.Attestations) != 1 || len(pv.Signatures) != 0 {
				t.Fatalf("Verify(%s) = %d attestations, %d signatures, want 1 attestation: %+v", tt.name, len(pv.Attestations), len(pv.Signatures), pv)
			}
			if tt.check != nil {
				tt.check(t, pv)
			}
		})
	}
}

// TestVerifyBundleSignatures: a message-signature bundle, and cosign's
// signature statement in a DSSE bundle, are signatures.
func TestVerifyBundleSignatures(t *testing.T) {
	ss := newSigstore(t)
	key, otherKey := newKey(t, "ecdsa"), newKey(t, "ecdsa")
	now := time.Now()
	// Judged an hour after signing: freshness, judged on the log's time,
	// says nothing here.
	later := now.Add(time.Hour)
	logged := now.Add(-4 * time.Minute)
	keyless := []policy.KeylessIdentity{{Issuer: ghIssuer, Subject: ghSubject}}
	other := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("cd", 32)}
	cosignStatement := func(d v1.Hash) []byte {
		return []byte(fmt.Sprintf(`{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"img","digest":{"sha256":%q}}],"predicateType":%q,"predicate":{}}`, d.Hex, cosignSignPredicateType))
	}
	tests := []struct {
		name   string
		sig    policy.Signatures
		bundle func(t *testing.T, d v1.Hash) []byte
		want   string
	}{
		{"keyless message signature", policy.Signatures{Required: true, Keyless: keyless, TrustedRoot: ss.trustedRootPath},
			func(t *testing.T, d v1.Hash) []byte {
				return ss.messageBundle(t, ss.keylessSigner(t, ghSubject, now.Add(-5*time.Minute)), d, logged)
			}, ""},
		{"keyless message signature, wrong identity", policy.Signatures{Required: true, Keyless: keyless, TrustedRoot: ss.trustedRootPath},
			func(t *testing.T, d v1.Hash) []byte {
				return ss.messageBundle(t, ss.keylessSigner(t, "https://github.com/acme/shop/.github/workflows/other.yml@refs/heads/main", now.Add(-5*time.Minute)), d, logged)
			}, "untrusted-signer"},
		{"keyless message signature of another digest", policy.Signatures{Required: true, Keyless: keyless, TrustedRoot: ss.trustedRootPath},
			func(t *testing.T, d v1.Hash) []byte {
				return ss.messageBundle(t, ss.keylessSigner(t, ghSubject, now.Add(-5*time.Minute)), other, logged)
			}, "untrusted-signer"},
		{"key message signature with log entry", policy.Signatures{Required: true, Keys: []string{key.pem}, TrustedRoot: ss.trustedRootPath},
			func(t *testing.T, d v1.Hash) []byte { return ss.messageBundle(t, keySigner(key), d, logged) }, ""},
		{"key message signature, wrong key", policy.Signatures{Required: true, Keys: []string{otherKey.pem}, IgnoreTlog: true},
			func(t *testing.T, d v1.Hash) []byte { return ss.messageBundle(t, keySigner(key), d, time.Time{}) }, "untrusted-signer"},
		{"cosign signature statement", policy.Signatures{Required: true, Keys: []string{key.pem}, TrustedRoot: ss.trustedRootPath},
			func(t *testing.T, d v1.Hash) []byte {
				return ss.dsseBundle(t, keySigner(key), cosignStatement(d), logged, nil)
			}, ""},
		{"cosign signature statement of another digest", policy.Signatures{Required: true, Keys: []string{key.pem}, TrustedRoot: ss.trustedRootPath},
			func(t *testing.T, d v1.Hash) []byte {
				return ss.dsseBundle(t, keySigner(key), cosignStatement(other), logged, nil)
			}, "untrusted-signer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := newTestRegistry(t, true)
			ref, d := reg.pushImage(t, "acme/shop:1")
			reg.attachBundle(t, "acme/shop", d, tt.bundle(t, d))
			v, _ := newVerifier(t)
			rules, pv, vd := decide(t, v, ref.String(), nil, compile(t, policy.Spec{Signatures: tt.sig}), later)
			if got := strings.Join(rules, ","); got != tt.want {
				t.Errorf("Decide(%s) rules = %q, want %q; signatures %+v; findings %+v", tt.name, got, tt.want, pv.Signatures, vd.Images[0].Findings)
			}
			if len(pv.Signatures) != 1 || pv.Signatures[0].Source != "bundle" || pv.Signatures[0].Verified != (tt.want == "") {
				t.Errorf("Verify(%s) signatures = %+v, want one from the bundle, verified %v", tt.name, pv.Signatures, tt.want == "")
			}
		})
	}
}
