package provenance

import (
	"bytes"
	"encoding/base64"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// FuzzParseEnvelope feeds untrusted DSSE envelopes to the in-toto parser:
// it must never panic, and what it accepts names at least one subject.
// The seed corpus is in testdata/fuzz/FuzzParseEnvelope.
func FuzzParseEnvelope(f *testing.F) {
	d := v1.Hash{Algorithm: "sha256", Hex: "30a21cad3d4f597381ff1bde72b65a678104ffdfe0c5723f5f1e9ae389e89061"}
	for _, pt := range []string{SLSAv02, SLSAv1} {
		st := statement(pt, builderID, sourceURI, time.Unix(1700000000, 0), d)
		f.Add([]byte(`{"payloadType":"application/vnd.in-toto+json","payload":"` + base64.StdEncoding.EncodeToString(st) + `","signatures":[]}`))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseEnvelope(b)
		if err == nil && len(st.SubjectDigests) == 0 {
			t.Errorf("ParseEnvelope(%q) = %+v, want an error for a statement without subjects", b, st)
		}
	})
}

func TestParseStatement(t *testing.T) {
	d := v1.Hash{Algorithm: "sha256", Hex: "30a21cad3d4f597381ff1bde72b65a678104ffdfe0c5723f5f1e9ae389e89061"}
	fin := time.Unix(1700000000, 0).UTC()
	for _, pt := range []string{SLSAv02, SLSAv1} {
		st, err := ParseStatement(statement(pt, builderID, sourceURI, fin, d))
		if err != nil || st.BuilderID != builderID || !st.FinishedOn.Equal(fin) || len(st.Sources) == 0 || st.SubjectDigests[0] != d.String() {
			t.Errorf("ParseStatement(%s) = %+v, %v, want builder %s, finished %v, sources, subject %s", pt, st, err, builderID, fin, d)
		}
	}
	for _, bad := range []string{``, `{}`, `{"_type":"https://in-toto.io/Statement/v1","subject":[]}`, `{"_type":"x","subject":[{"digest":{"sha256":"ab"}}]}`} {
		if st, err := ParseStatement([]byte(bad)); err == nil {
			t.Errorf("ParseStatement(%q) = %+v, want an error", bad, st)
		}
	}
}

// FuzzParseTrustedRoots feeds trusted-root files (one document, or JSON
// Lines as gh attestation trusted-root writes) to the parser: it never
// panics, and what it accepts is at least one instance. The seed corpus
// is in testdata/fuzz/FuzzParseTrustedRoots, beside the real file.
func FuzzParseTrustedRoots(f *testing.F) {
	// One instance of the real file (testdata/github), cut to a log and a
	// CA: the whole file is too large for the fuzzer to minimise inputs
	// of in reasonable time.
	one := `{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1","tlogs":[{"baseUrl":"https://rekor.sigstore.dev","hashAlgorithm":"SHA2_256",` +
		`"publicKey":{"rawBytes":"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE2G2Y+2tabdTV5BcGiBIx0a9fAFwrkBbmLSGtks4L3qX6yYY0zufBnhC8Ur/iy55GhWP/9A/bY2LhC30M9+RYtw==",` +
		`"keyDetails":"PKIX_ECDSA_P256_SHA_256","validFor":{"start":"2021-01-12T11:53:27Z"}},"logId":{"keyId":"wNI9atQGlz+VWfO6LRygH4QUfY/8W4RFwiT5i5WRgB0="}}],` +
		`"certificateAuthorities":[{"subject":{"organization":"sigstore.dev","commonName":"sigstore"},"uri":"https://fulcio.sigstore.dev","certChain":{"certificates":[{"rawBytes":` +
		`"MIIB+DCCAX6gAwIBAgITNVkDZoCiofPDsy7dfm6geLbuhzAKBggqhkjOPQQDAzAqMRUwEwYDVQQKEwxzaWdzdG9yZS5kZXYxETAPBgNVBAMTCHNpZ3N0b3JlMB4XDTIxMDMwNzAzMjAyOVoXDTMxMDIyMzAzMjAyOVowKjEVMBMGA1UEChMMc2lnc3RvcmUuZGV2MREwDwYDVQQDEwhzaWdzdG9yZTB2MBAGByqGSM49AgEGBSuBBAAiA2IABLSyA7Ii5k+pNO8ZEWY0ylemWDowOkNa3kL+GZE5Z5GWehL9/A9bRNA3RbrsZ5i0JcastaRL7Sp5fp/jD5dxqc/UdTVnlvS16an+2Yfswe/QuLolRUCrcOE2+2iA5+tzd6NmMGQwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwHQYDVR0OBBYEFMjFHQBBmiQpMlEk6w2uSu1KBtPsMB8GA1UdIwQYMBaAFMjFHQBBmiQpMlEk6w2uSu1KBtPsMAoGCCqGSM49BAMDA2gAMGUCMH8liWJfMui6vXXBhjDgY4MwslmN/TJxVe/83WrFomwmNf056y1X48F9c4m3a3ozXAIxAKjRay5/aj/jsKKGIkmQatjI8uupHr/+CxFvaJWmpYqNkLDGRU+9orzh5hI2RrcuaQ=="}]},` +
		`"validFor":{"start":"2021-03-07T03:20:29Z"}}]}`
	f.Add([]byte(one))
	f.Add([]byte(one + "\n" + one + "\n"))
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1"}` + "\n" + `{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1","tlogs":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		roots, err := ParseTrustedRoots(b)
		if err == nil && len(roots) == 0 {
			t.Errorf("ParseTrustedRoots(%q) = no roots and no error", b)
		}
	})
}

// FuzzParseVSA feeds in-toto statements with verification-summary
// predicates to the parser: it never panics, and a VSA it accepts names
// a verifier, a resource and a known result.
func FuzzParseVSA(f *testing.F) {
	d := "30a21cad3d4f597381ff1bde72b65a678104ffdfe0c5723f5f1e9ae389e89061"
	f.Add([]byte(`{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"img","digest":{"sha256":"` + d + `"}}],"predicateType":"` + VSAv1 +
		`","predicate":{"verifier":{"id":"https://verifier.example"},"timeVerified":"2026-11-26T10:00:00Z","resourceUri":"ghcr.io/acme/shop@sha256:` + d +
		`","policy":{"uri":"https://example/policy"},"verificationResult":"PASSED","verifiedLevels":["SLSA_BUILD_LEVEL_3"]}}`))
	f.Add([]byte(`{"_type":"https://in-toto.io/Statement/v1","subject":[{"digest":{"sha256":"ab"}}],"predicateType":"` + VSAv1 + `","predicate":{"verificationResult":"FAILED"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseStatement(b)
		if err != nil || st.PredicateType != VSAv1 {
			return
		}
		if v := st.VSA; v == nil || v.VerifierID == "" || v.ResourceURI == "" || (v.Result != "PASSED" && v.Result != "FAILED") || len(v.VerifiedLevels) > maxVSALevels {
			t.Errorf("ParseStatement(%q).VSA = %+v", b, st.VSA)
		}
	})
}

// FuzzNotationManifest feeds Notary Project signature manifests (as a
// registry serves them) to the reader: it never panics, and what it
// accepts has a subject and one JWS or COSE envelope of bounded size.
func FuzzNotationManifest(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.cncf.notary.signature",` +
		`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},` +
		`"layers":[{"mediaType":"application/jose+json","digest":"sha256:30a21cad3d4f597381ff1bde72b65a678104ffdfe0c5723f5f1e9ae389e89061","size":2000}],` +
		`"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:30a21cad3d4f597381ff1bde72b65a678104ffdfe0c5723f5f1e9ae389e89061","size":500}}`))
	f.Add([]byte(`{"schemaVersion":2,"layers":[{"mediaType":"application/cose","size":-1}],"subject":{}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		mf, err := v1.ParseManifest(bytes.NewReader(b))
		if err != nil {
			return
		}
		mt, layer, _, err := notationLayer(mf)
		if err != nil {
			return
		}
		if (mt != notationJWS && mt != notationCOSE) || layer.Size < 0 || layer.Size > maxPayloadBytes || mf.Subject == nil {
			t.Errorf("notationLayer(%q) = %q, %+v", b, mt, layer)
		}
	})
}
