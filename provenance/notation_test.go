package provenance

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/digitorus/timestamp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/notaryproject/notation-go"
	notationregistry "github.com/notaryproject/notation-go/registry"
	"github.com/notaryproject/notation-go/signer"
	"github.com/notaryproject/tspclient-go"
	"oras.land/oras-go/v2/registry/remote"

	"buildguard.dev/buildguard/internal/testregistry"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
)

// notaryCA is a test certificate authority for Notary Project signing
// certificates.
type notaryCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	pemPath string
}

var serial atomic.Int64

func nextSerial() *big.Int { return big.NewInt(time.Now().UnixNano() + serial.Add(1)) }

func newNotaryCA(t testing.TB, cn string) *notaryCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: cn, Organization: []string{"Acme"}, Country: []string{"US"}},
		NotBefore: time.Now().Add(-24 * time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return &notaryCA{cert: cert, key: key, pemPath: path}
}

// issue makes a code-signing certificate for CN=cn, O=Acme, C=US that
// names crlURL as its CRL distribution point when it is not empty.
func (ca *notaryCA) issue(t testing.TB, cn, crlURL string) (crypto.Signer, []*x509.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: cn, Organization: []string{"Acme"}, Country: []string{"US"}, Province: []string{"WA"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}, BasicConstraintsValid: true}
	if crlURL != "" {
		tmpl.CRLDistributionPoints = []string{crlURL}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return key, []*x509.Certificate{cert, ca.cert}
}

// crl writes a CRL of ca revoking certs, valid for an hour.
func (ca *notaryCA) crl(t testing.TB, revoked ...*x509.Certificate) string {
	t.Helper()
	tmpl := &x509.RevocationList{Number: nextSerial(), ThisUpdate: time.Now().Add(-time.Hour), NextUpdate: time.Now().Add(time.Hour)}
	for _, c := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: time.Now().Add(-2 * time.Hour)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.cert, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.crl")
	if err := os.WriteFile(path, der, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// notationSign signs digest d of host/repo with Notation's own signer and
// pushes the signature with Notation's own repository (oras-go): as an
// OCI 1.1 referrer, or in the referrers tag schema when the registry has
// no referrers API.
func notationSign(t testing.TB, host, repo string, d v1.Hash, key crypto.Signer, chain []*x509.Certificate, mediaType string) {
	t.Helper()
	r, err := remote.NewRepository(host + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	r.PlainHTTP = true
	s, err := signer.NewGenericSigner(key, chain)
	if err != nil {
		t.Fatal(err)
	}
	_, err = notation.Sign(context.Background(), s, notationregistry.NewRepository(r), notation.SignOptions{
		SignerSignOptions: notation.SignerSignOptions{SignatureMediaType: mediaType},
		ArtifactReference: host + "/" + repo + "@" + d.String(),
	})
	if err != nil {
		t.Fatalf("notation.Sign: %v", err)
	}
}

func remoteWrite(ref nameReference, img v1.Image) error { return ggcrremote.Write(ref, img) }

// notationRegistries are the registries the Notation tests sign in: the
// in-memory one with and without the referrers API, and Debian's
// docker-registry (no referrers API: the referrers tag schema).
func notationRegistries(t *testing.T) map[string]func(t *testing.T) (host string, push func(t *testing.T, repoTag string) v1.Hash) {
	inMemory := func(opts ...testregistry.Option) func(t *testing.T) (string, func(*testing.T, string) v1.Hash) {
		return func(t *testing.T) (string, func(*testing.T, string) v1.Hash) {
			reg := testregistry.New(t, opts...)
			return reg.Host, func(t *testing.T, repoTag string) v1.Hash {
				return reg.Push(t, repoTag, testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-48 * time.Hour)}))
			}
		}
	}
	return map[string]func(t *testing.T) (string, func(*testing.T, string) v1.Hash){
		"referrers-api": inMemory(testregistry.WithReferrers()),
		"tag-schema":    inMemory(),
		"docker-registry": func(t *testing.T) (string, func(*testing.T, string) v1.Hash) {
			host := testregistry.StartDistribution(t)
			return host, func(t *testing.T, repoTag string) v1.Hash {
				img := testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-48 * time.Hour)})
				ref, err := nameParse(host + "/" + repoTag)
				if err != nil {
					t.Fatal(err)
				}
				if err := remoteWrite(ref, img); err != nil {
					t.Fatal(err)
				}
				d, _ := img.Digest()
				return d
			}
		},
	}
}

func TestVerifyNotation(t *testing.T) {
	ca, otherCA := newNotaryCA(t, "Acme Root"), newNotaryCA(t, "Evil Root")
	const crlURL = "http://crl.acme.test/root.crl" // never fetched
	type signed struct {
		key   crypto.Signer
		chain []*x509.Certificate
	}
	good := func(t *testing.T) signed { k, c := ca.issue(t, "release", crlURL); return signed{k, c} }
	trust := func(level string, scopes []string, identities []string, rev policy.NotationRevocation) *policy.NotationTrust {
		return &policy.NotationTrust{
			TrustStores:   []policy.NotationTrustStore{{Name: "acme", Certificates: []string{ca.pemPath}}},
			TrustPolicies: []policy.NotationTrustPolicy{{Name: "prod", RegistryScopes: scopes, VerificationLevel: level, TrustStores: []string{"ca:acme"}, TrustedIdentities: identities}},
			Revocation:    rev,
		}
	}
	release := []string{"x509.subject: C=US, ST=WA, O=Acme, CN=release"}
	all := []string{"*"}
	off := policy.NotationRevocation{Off: true}
	tests := []struct {
		name       string
		trust      func(t *testing.T, host string, s signed) *policy.NotationTrust
		sign       func(t *testing.T) signed // nil: unsigned
		want       string                    // rules
		revocation string                    // evidence, when verified
		errHas     string
	}{
		{"strict, trusted identity", func(t *testing.T, host string, s signed) *policy.NotationTrust {
			return trust("strict", []string{host + "/acme/shop"}, release, off)
		}, good, "", "off", ""},
		{"unsigned", func(t *testing.T, host string, s signed) *policy.NotationTrust {
			return trust("strict", all, release, off)
		}, nil, "unsigned", "", ""},
		{"another identity", func(t *testing.T, host string, s signed) *policy.NotationTrust {
			return trust("strict", all, []string{"x509.subject: C=US, ST=WA, O=Acme, CN=deploy"}, off)
		}, good, "untrusted-signer", "", "trusted identities"},
		{"another CA", func(t *testing.T, host string, s signed) *policy.NotationTrust { return trust("strict", all, all, off) },
			func(t *testing.T) signed { k, c := otherCA.issue(t, "release", ""); return signed{k, c} }, "untrusted-signer", "", "trusted certificate"},
		{"no trust policy for the repository", func(t *testing.T, host string, s signed) *policy.NotationTrust {
			return trust("strict", []string{host + "/acme/other"}, all, off)
		}, good, "untrusted-signer", "", "no applicable trust policy"},
		{"CRL, not revoked", func(t *testing.T, host string, s signed) *policy.NotationTrust {
			return trust("strict", all, release, policy.NotationRevocation{CRLs: []string{ca.crl(t)}})
		}, good, "", "crl", ""},
		{"CRL, revoked, strict", func(t *testing.T, host string, s signed) *policy.NotationTrust {
			return trust("strict", all, release, policy.NotationRevocation{CRLs: []string{ca.crl(t, s.chain[0])}})
		}, good, "untrusted-signer", "", "revoked"},
		{"CRL, revoked, permissive: logged, a warning", func(t *testing.T, host string, s signed) *policy.NotationTrust {
			return trust("permissive", all, release, policy.NotationRevocation{CRLs: []string{ca.crl(t, s.chain[0])}})
		}, good, "untrusted-signer/warn", "crl", "revoked"},
		{"no CRL of the issuer, strict", func(t *testing.T, host string, s signed) *policy.NotationTrust {
			return trust("strict", all, release, policy.NotationRevocation{CRLs: []string{otherCA.crl(t)}})
		}, good, "untrusted-signer", "", "revocation status is unknown"},
		{"revoked, revocation off", func(t *testing.T, host string, s signed) *policy.NotationTrust {
			_ = ca.crl(t, s.chain[0])
			return trust("strict", all, release, off)
		}, good, "", "off", ""},
		{"another identity, audit: logged, a warning", func(t *testing.T, host string, s signed) *policy.NotationTrust {
			return trust("audit", all, []string{"x509.subject: C=US, ST=WA, O=Acme, CN=deploy"}, off)
		}, good, "untrusted-signer/warn", "off", "authenticity"},
	}
	for regName, setup := range notationRegistries(t) {
		for _, env := range []string{notationJWS, notationCOSE} {
			for _, tt := range tests {
				t.Run(regName+"/"+envelopeName(env)+"/"+tt.name, func(t *testing.T) {
					if regName == "docker-registry" && env == notationCOSE && tt.name != "strict, trusted identity" {
						t.Skip("the docker-registry cases run once per envelope") // each starts a registry process
					}
					host, push := setup(t)
					d := push(t, "acme/shop:1")
					var s signed
					if tt.sign != nil {
						s = tt.sign(t)
						notationSign(t, host, "acme/shop", d, s.key, s.chain, env)
					}
					spec := policy.Spec{Signatures: policy.Signatures{Required: true, Notation: tt.trust(t, host, s)}}
					v := New(registry.New(registry.WithTransport(http.DefaultTransport)))
					rules, pv, vd := decide(t, v, host+"/acme/shop:1", nil, compile(t, spec), time.Now())
					got := strings.Join(rules, ",")
					if tt.want == "untrusted-signer/warn" {
						if got != "untrusted-signer" || vd.Images[0].Findings[0].Action != policy.ActionWarn {
							t.Fatalf("Decide = %q %+v, want untrusted-signer as a warning", got, vd.Images[0].Findings)
						}
					} else if got != tt.want {
						t.Fatalf("Decide = %q, want %q; signatures %+v; findings %+v", got, tt.want, pv.Signatures, vd.Images[0].Findings)
					}
					if tt.sign == nil {
						return
					}
					if len(pv.Signatures) != 1 || pv.Signatures[0].Type != "notation" || pv.Signatures[0].Notation == nil || pv.Signatures[0].Notation.Envelope != envelopeName(env) {
						t.Fatalf("Verify = %+v, want one Notation signature in a %s envelope", pv.Signatures, envelopeName(env))
					}
					sig := pv.Signatures[0]
					if tt.revocation != "" && (!sig.Verified || sig.Notation.Revocation != tt.revocation) {
						t.Errorf("signature %+v %+v, want verified with revocation %s", sig, sig.Notation, tt.revocation)
					}
					if tt.errHas != "" && !strings.Contains(sig.Error+strings.Join(sig.Notation.Logged, ";"), tt.errHas) {
						t.Errorf("signature error %q, logged %q, want it to say %q", sig.Error, sig.Notation.Logged, tt.errHas)
					}
					if sig.Verified && (sig.Notation.Signer != "CN=release,O=Acme,ST=WA,C=US" || sig.KeyFingerprint == "") {
						t.Errorf("signature %+v %+v, want the signer's subject and key", sig, sig.Notation)
					}
					if tt.want != "" && tt.want != "unsigned" {
						ev := vd.Images[0].Findings[0].Evidence
						if types, _ := ev["signatureTypes"].([]string); len(types) != 1 || !strings.HasPrefix(types[0], "notation") {
							t.Errorf("evidence %v, want signatureTypes notation", ev)
						}
						if want := map[bool]string{true: "off", false: "crl"}[spec.Signatures.Notation.Revocation.Off]; ev["notationRevocation"] != want {
							t.Errorf("evidence %v, want notationRevocation %s", ev, want)
						}
					}
				})
			}
		}
	}
}

// tsaTimestamper answers Notation's RFC 3161 requests with the test
// timestamping authority, dated at.
type tsaTimestamper struct {
	tsa *testTSA
	at  time.Time
}

// Timestamp implements tspclient.Timestamper.
func (x tsaTimestamper) Timestamp(_ context.Context, req *tspclient.Request) (*tspclient.Response, error) {
	h := crypto.SHA256
	switch oid := req.MessageImprint.HashAlgorithm.Algorithm; {
	case oid.Equal(asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}):
		h = crypto.SHA384
	case oid.Equal(asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}):
		h = crypto.SHA512
	}
	ts := timestamp.Timestamp{HashAlgorithm: h, HashedMessage: req.MessageImprint.HashedMessage, Time: x.at, Nonce: req.Nonce,
		Policy: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 2}, AddTSACertificate: true}
	if req.ReqPolicy != nil {
		ts.Policy = req.ReqPolicy
	}
	der, err := ts.CreateResponseWithOpts(x.tsa.leaf, x.tsa.key, crypto.SHA256)
	if err != nil {
		return nil, err
	}
	var resp tspclient.Response
	if err := resp.UnmarshalBinary(der); err != nil {
		return nil, err
	}
	return &resp, nil
}

// TestNotationTimestamp: a Notation signature countersigned by a
// timestamping authority of a tsa store carries the timestamp, and
// fresh-image judges the image by it; without a tsa store in the trust
// policy the countersignature is not verified, and proves nothing.
func TestNotationTimestamp(t *testing.T) {
	ca := newNotaryCA(t, "Acme Root")
	now := time.Now()
	tsa := newTestTSA(t, now)
	tsaPath := filepath.Join(t.TempDir(), "tsa.pem")
	if err := os.WriteFile(tsaPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tsa.root.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	stamped := now.Add(-2 * time.Minute).Truncate(time.Second)
	reg := testregistry.New(t, testregistry.WithReferrers())
	d := reg.Push(t, "acme/shop:1", testregistry.Build(t, testregistry.Image{Created: now.Add(-48 * time.Hour)}))
	key, chain := ca.issue(t, "release", "")
	r, err := remote.NewRepository(reg.Host + "/acme/shop")
	if err != nil {
		t.Fatal(err)
	}
	r.PlainHTTP = true
	s, err := signer.NewGenericSigner(key, chain)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(tsa.root)
	if _, err := notation.Sign(context.Background(), s, notationregistry.NewRepository(r), notation.SignOptions{
		SignerSignOptions: notation.SignerSignOptions{SignatureMediaType: notationJWS, Timestamper: tsaTimestamper{tsa, stamped}, TSARootCAs: roots},
		ArtifactReference: reg.Host + "/acme/shop@" + d.String(),
	}); err != nil {
		t.Fatalf("notation.Sign: %v", err)
	}
	for _, withTSA := range []bool{true, false} {
		stores := []string{"ca:acme"}
		if withTSA {
			stores = append(stores, "tsa:acme-tsa")
		}
		spec := policy.Spec{Signatures: policy.Signatures{Required: true, Notation: &policy.NotationTrust{
			TrustStores:   []policy.NotationTrustStore{{Name: "acme", Certificates: []string{ca.pemPath}}, {Name: "acme-tsa", Type: "tsa", Certificates: []string{tsaPath}}},
			TrustPolicies: []policy.NotationTrustPolicy{{Name: "all", RegistryScopes: []string{"*"}, TrustStores: stores, TrustedIdentities: []string{"*"}}},
			Revocation:    policy.NotationRevocation{Off: true}}}}
		v := New(registry.New(registry.WithTransport(http.DefaultTransport)))
		rules, pv, vd := decide(t, v, reg.Host+"/acme/shop:1", nil, compile(t, spec), stamped.Add(time.Minute))
		sig := pv.Signatures[0]
		if !sig.Verified {
			t.Fatalf("tsa store %v: signature not verified: %s", withTSA, sig.Error)
		}
		if !withTSA {
			if !sig.SignedAt.IsZero() || len(rules) != 0 {
				t.Errorf("without a tsa store: signed at %v, rules %v; an unverified countersignature proves nothing", sig.SignedAt, rules)
			}
			continue
		}
		if !sig.SignedAt.Equal(stamped) || sig.SignedAtSource != policy.TimeSourceTimestampAuthority {
			t.Errorf("signed at %v by %q, want %v by the timestamp authority", sig.SignedAt, sig.SignedAtSource, stamped)
		}
		if strings.Join(rules, ",") != "fresh-image" || vd.Images[0].Findings[0].Evidence["timeSource"] != policy.TimeSourceTimestampAuthority {
			t.Errorf("a minute after the timestamp: rules %v %+v, want fresh-image by the timestamp authority", rules, vd.Images[0].Findings)
		}
	}
}
