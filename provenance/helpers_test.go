package provenance

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/dsse"
)

// testRegistry is an in-memory registry on loopback that counts requests.
type testRegistry struct {
	host string
	mu   sync.Mutex
	reqs []string
}

func newTestRegistry(t testing.TB, referrers bool) *testRegistry {
	t.Helper()
	r := &testRegistry{}
	opts := []ggcrregistry.Option{ggcrregistry.Logger(log.New(io.Discard, "", 0))}
	if referrers {
		opts = append(opts, ggcrregistry.WithReferrersSupport(true))
	}
	inner := ggcrregistry.New(opts...)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.reqs = append(r.reqs, req.Method+" "+req.URL.Path)
		r.mu.Unlock()
		inner.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	r.host = u.Host
	return r
}

func (r *testRegistry) reset() { r.mu.Lock(); r.reqs = nil; r.mu.Unlock() }
func (r *testRegistry) requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.reqs...)
}

func (r *testRegistry) ref(t testing.TB, s string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(r.host+"/"+s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func (r *testRegistry) pushImage(t testing.TB, repoTag string) (name.Reference, v1.Hash) {
	t.Helper()
	img, err := random.Image(128, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref := r.ref(t, repoTag)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return ref, d
}

// pushIndex pushes an index of n random images and returns its digest and
// the children's digests.
func (r *testRegistry) pushIndex(t testing.TB, repoTag string, n int) (name.Reference, v1.Hash, []v1.Hash) {
	t.Helper()
	var idx v1.ImageIndex = mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var kids []v1.Hash
	archs := []string{"amd64", "arm64", "s390x"}
	for i := 0; i < n; i++ {
		img, _ := random.Image(64, 1)
		d, _ := img.Digest()
		kids = append(kids, d)
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: archs[i]}}})
	}
	ref := r.ref(t, repoTag)
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	return ref, d, kids
}

// layer is one cosign signature or attestation layer.
type layer struct {
	payload []byte
	ann     map[string]string
}

// attach writes layers as a cosign .sig/.att manifest for digest, with the
// tag scheme or as an OCI 1.1 referrer.
func (r *testRegistry) attach(t testing.TB, repo string, digest v1.Hash, att, referrer bool, ls ...layer) {
	t.Helper()
	mt := types.MediaType("application/vnd.dev.cosign.simplesigning.v1+json")
	if att {
		mt = "application/vnd.dsse.envelope.v1+json"
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	artifactType := ArtifactTypeSignature
	if att {
		artifactType = ArtifactTypeAttestation
	}
	img = mutate.ConfigMediaType(img, types.MediaType(artifactType))
	for _, l := range ls {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(l.payload, mt), Annotations: l.ann})
		if err != nil {
			t.Fatal(err)
		}
	}
	rp := r.ref(t, repo).Context()
	if referrer {
		img = mutate.Subject(img, v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: digest, Size: 1}).(v1.Image)
		d, _ := img.Digest()
		if err := remote.Write(rp.Digest(d.String()), img); err != nil {
			t.Fatal(err)
		}
		return
	}
	suffix := ".sig"
	if att {
		suffix = ".att"
	}
	if err := remote.Write(rp.Tag(strings.Replace(digest.String(), ":", "-", 1)+suffix), img); err != nil {
		t.Fatal(err)
	}
}

// keyPair is a signing key of one algorithm.
type keyPair struct {
	signer signature.Signer
	pem    string
}

func newKey(t testing.TB, alg string) keyPair {
	t.Helper()
	var priv crypto.Signer
	var err error
	switch alg {
	case "ecdsa":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "rsa":
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ed25519":
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	s, err := signature.LoadSigner(priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	pemKey, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{signer: s, pem: string(pemKey)}
}

// simpleSigning is cosign's signature payload for digest.
func simpleSigning(repo string, digest v1.Hash) []byte {
	return []byte(fmt.Sprintf(`{"critical":{"identity":{"docker-reference":%q},"image":{"docker-manifest-digest":%q},"type":"cosign container image signature"},"optional":null}`, repo, digest.String()))
}

func sign(t testing.TB, s signature.Signer, payload []byte) string {
	t.Helper()
	sig, err := s.SignMessage(strings.NewReader(string(payload)))
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

// statement is an in-toto statement with SLSA provenance.
func statement(predicateType, builder, source string, finished time.Time, subjects ...v1.Hash) []byte {
	var subj []string
	for _, s := range subjects {
		subj = append(subj, fmt.Sprintf(`{"name":"img","digest":{"sha256":%q}}`, s.Hex))
	}
	var pred string
	if predicateType == SLSAv02 {
		pred = fmt.Sprintf(`{"builder":{"id":%q},"buildType":"https://example/build","invocation":{"configSource":{"uri":%q,"digest":{"sha1":"abc"}}},"metadata":{"buildFinishedOn":%q},"materials":[{"uri":%q}]}`,
			builder, source, finished.Format(time.RFC3339), source)
	} else {
		pred = fmt.Sprintf(`{"buildDefinition":{"buildType":"https://example/build","externalParameters":{"workflow":{"repository":%q,"ref":"refs/heads/main","path":".github/workflows/release.yml"}},"resolvedDependencies":[{"uri":%q}]},"runDetails":{"builder":{"id":%q},"metadata":{"finishedOn":%q}}}`,
			strings.TrimPrefix(source, "git+"), source, builder, finished.Format(time.RFC3339))
	}
	return []byte(fmt.Sprintf(`{"_type":"https://in-toto.io/Statement/v1","subject":[%s],"predicateType":%q,"predicate":%s}`, strings.Join(subj, ","), predicateType, pred))
}

func envelope(t testing.TB, s signature.Signer, st []byte) []byte {
	t.Helper()
	env, err := dsse.WrapSigner(s, "application/vnd.in-toto+json").SignMessage(strings.NewReader(string(st)))
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// sigstore is a test Fulcio CA chain and a test Rekor key, written as a
// trusted_root.json.
type sigstore struct {
	root, inter     *x509.Certificate
	interKey        *ecdsa.PrivateKey
	rekorKey        *ecdsa.PrivateKey
	logID           []byte
	trustedRootPath string
	trustedRootJSON []byte
	now             time.Time
	logIndex        int64
	tsa             *testTSA // nil without a timestamping authority
}

var oidcIssuerOID = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 1}

func newSigstore(t testing.TB) *sigstore { return newSigstoreInstance(t, true, false) }

// newSigstoreInstance is a test Sigstore instance: a Fulcio CA chain,
// a Rekor key when tlog (the public-good instance), and a timestamping
// authority when tsa (GitHub's instance has one and no log).
func newSigstoreInstance(t testing.TB, tlog, tsa bool) *sigstore {
	t.Helper()
	now := time.Now()
	ss := &sigstore{now: now}
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root", Organization: []string{"sigstore.test"}},
		NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	ss.root, _ = x509.ParseCertificate(der)
	ss.interKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	interTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "test intermediate", Organization: []string{"sigstore.test"}},
		NotBefore: now.Add(-47 * time.Hour), NotAfter: now.Add(47 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}}
	der, err = x509.CreateCertificate(rand.Reader, interTmpl, ss.root, ss.interKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	ss.inter, _ = x509.ParseCertificate(der)
	ss.rekorKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pkix, _ := x509.MarshalPKIXPublicKey(ss.rekorKey.Public())
	id := sha256.Sum256(pkix)
	ss.logID = id[:]
	logs := map[string]*root.TransparencyLog{}
	if tlog {
		logs[hex.EncodeToString(ss.logID)] = &root.TransparencyLog{BaseURL: "https://rekor.test", ID: ss.logID, ValidityPeriodStart: now.Add(-48 * time.Hour), HashFunc: crypto.SHA256, PublicKey: ss.rekorKey.Public(), SignatureHashFunc: crypto.SHA256}
	}
	var tsas []root.TimestampingAuthority
	if tsa {
		ss.tsa = newTestTSA(t, now)
		tsas = append(tsas, &root.SigstoreTimestampingAuthority{Root: ss.tsa.root, Leaf: ss.tsa.leaf, ValidityPeriodStart: now.Add(-48 * time.Hour), URI: "https://tsa.test"})
	}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01,
		[]root.CertificateAuthority{&root.FulcioCertificateAuthority{Root: ss.root, Intermediates: []*x509.Certificate{ss.inter}, ValidityPeriodStart: now.Add(-48 * time.Hour), URI: "https://fulcio.test"}},
		nil, tsas, logs)
	if err != nil {
		t.Fatal(err)
	}
	b, err := tr.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	ss.trustedRootJSON = b
	ss.trustedRootPath = filepath.Join(t.TempDir(), "trusted_root.json")
	if err := os.WriteFile(ss.trustedRootPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return ss
}

// leaf issues a Fulcio-like certificate for subject (a URI) from issuer,
// valid from notBefore for ten minutes.
func (ss *sigstore) leaf(t testing.TB, subject, issuer string, notBefore time.Time) (signature.Signer, string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(subject)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: notBefore, NotAfter: notBefore.Add(10 * time.Minute),
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		ExtraExtensions: []pkix.Extension{{Id: oidcIssuerOID, Value: []byte(issuer)}}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ss.inter, key.Public(), ss.interKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	certPEM, _ := cryptoutils.MarshalCertificateToPEM(cert)
	chainPEM, _ := cryptoutils.MarshalCertificatesToPEM([]*x509.Certificate{ss.inter, ss.root})
	s, _ := signature.LoadSigner(key, crypto.SHA256)
	return s, string(certPEM), string(chainPEM)
}

// set returns the cosign bundle annotation (a Rekor SET over a
// hashedrekord entry) for a signature b64sig over payload by the key or
// certificate in pubPEM, integrated at when.
func (ss *sigstore) set(t testing.TB, payload []byte, b64sig, pubPEM string, when time.Time) string {
	t.Helper()
	h := sha256.Sum256(payload)
	return ss.cosignBundle(t, hashedRekordBody(hex.EncodeToString(h[:]), b64sig, pubPEM), when)
}
