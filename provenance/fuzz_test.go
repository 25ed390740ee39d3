package provenance

import (
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
