package provenance

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"buildguard.dev/buildguard/policy"
)

// Predicate types of SLSA provenance and verification summaries.
const (
	SLSAv02 = policy.PredicateSLSAv02
	SLSAv1  = policy.PredicateSLSAv1
	VSAv1   = policy.PredicateVSAv1
)

// inTotoPayloadType is the DSSE payload type of an in-toto statement.
const inTotoPayloadType = "application/vnd.in-toto+json"

// maxPayloadBytes bounds one signature payload, DSSE envelope or bundle.
const maxPayloadBytes = 1 << 20

// Statement is what buildguard reads of an in-toto statement with SLSA
// provenance or a SLSA verification summary.
type Statement struct {
	PredicateType  string
	SubjectDigests []string // "sha256:<hex>"
	BuilderID      string
	Sources        []string
	FinishedOn     time.Time
	// VSA is the verification summary, for PredicateType VSAv1.
	VSA *policy.VSA
}

// ParseEnvelope decodes a DSSE envelope holding an in-toto statement and
// reads its subjects and, for SLSA provenance v0.2 and v1, the builder,
// the sources and the build finish time. It checks no signature: the
// caller verifies the envelope before trusting what this returns.
func ParseEnvelope(b []byte) (*Statement, error) {
	if len(b) > maxPayloadBytes {
		return nil, fmt.Errorf("envelope is %d bytes, more than %d", len(b), maxPayloadBytes)
	}
	var env struct {
		PayloadType string `json:"payloadType"`
		Payload     string `json:"payload"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return nil, fmt.Errorf("DSSE envelope: %v", err)
	}
	if env.PayloadType != inTotoPayloadType {
		return nil, fmt.Errorf("DSSE payload type %q is not %s", env.PayloadType, inTotoPayloadType)
	}
	st, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		if st, err = base64.RawURLEncoding.DecodeString(env.Payload); err != nil {
			return nil, errors.New("DSSE payload is not base64")
		}
	}
	return ParseStatement(st)
}

// ParseStatement reads an in-toto statement (v0.1 or v1).
func ParseStatement(b []byte) (*Statement, error) {
	var st struct {
		Type    string `json:"_type"`
		Subject []struct {
			Name   string            `json:"name"`
			Digest map[string]string `json:"digest"`
		} `json:"subject"`
		PredicateType string          `json:"predicateType"`
		Predicate     json.RawMessage `json:"predicate"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("in-toto statement: %v", err)
	}
	if !strings.HasPrefix(st.Type, "https://in-toto.io/Statement/") {
		return nil, fmt.Errorf("in-toto statement: _type %q is not an in-toto statement", st.Type)
	}
	out := &Statement{PredicateType: st.PredicateType}
	for _, s := range st.Subject {
		if d := s.Digest["sha256"]; d != "" {
			out.SubjectDigests = append(out.SubjectDigests, "sha256:"+strings.ToLower(d))
		}
	}
	if len(out.SubjectDigests) == 0 {
		return nil, errors.New("in-toto statement names no sha256 subject")
	}
	var err error
	switch st.PredicateType {
	case SLSAv02:
		err = out.slsa02(st.Predicate)
	case SLSAv1:
		err = out.slsa1(st.Predicate)
	case VSAv1:
		out.VSA, err = ParseVSA(st.Predicate)
	}
	if err != nil {
		return nil, fmt.Errorf("%s predicate: %v", st.PredicateType, err)
	}
	sort.Strings(out.Sources)
	return out, nil
}

// IsSLSA reports whether the statement is SLSA provenance.
func (s *Statement) IsSLSA() bool { return s.PredicateType == SLSAv02 || s.PredicateType == SLSAv1 }

func (s *Statement) addSource(uri string) {
	uri = strings.TrimSpace(uri)
	if uri == "" || len(uri) > 2048 {
		return
	}
	for _, x := range s.Sources {
		if x == uri {
			return
		}
	}
	if len(s.Sources) < 64 {
		s.Sources = append(s.Sources, uri)
	}
}

func (s *Statement) slsa02(raw json.RawMessage) error {
	var p struct {
		Builder struct {
			ID string `json:"id"`
		} `json:"builder"`
		Invocation struct {
			ConfigSource struct {
				URI string `json:"uri"`
			} `json:"configSource"`
		} `json:"invocation"`
		Metadata struct {
			BuildFinishedOn *time.Time `json:"buildFinishedOn"`
		} `json:"metadata"`
		Materials []struct {
			URI string `json:"uri"`
		} `json:"materials"`
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return err
	}
	s.BuilderID = p.Builder.ID
	s.addSource(p.Invocation.ConfigSource.URI)
	for _, m := range p.Materials {
		if isRepository(m.URI) {
			s.addSource(m.URI)
		}
	}
	if p.Metadata.BuildFinishedOn != nil {
		s.FinishedOn = p.Metadata.BuildFinishedOn.UTC()
	}
	return nil
}

func (s *Statement) slsa1(raw json.RawMessage) error {
	var p struct {
		BuildDefinition struct {
			ExternalParameters   json.RawMessage `json:"externalParameters"`
			ResolvedDependencies []struct {
				URI string `json:"uri"`
			} `json:"resolvedDependencies"`
		} `json:"buildDefinition"`
		RunDetails struct {
			Builder struct {
				ID string `json:"id"`
			} `json:"builder"`
			Metadata struct {
				FinishedOn *time.Time `json:"finishedOn"`
			} `json:"metadata"`
		} `json:"runDetails"`
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return err
	}
	s.BuilderID = p.RunDetails.Builder.ID
	if len(p.BuildDefinition.ExternalParameters) > 0 {
		var ext any
		if err := json.Unmarshal(p.BuildDefinition.ExternalParameters, &ext); err == nil {
			walkSources(ext, s, 0)
		}
	}
	for _, d := range p.BuildDefinition.ResolvedDependencies {
		if isRepository(d.URI) {
			s.addSource(d.URI)
		}
	}
	if p.RunDetails.Metadata.FinishedOn != nil {
		s.FinishedOn = p.RunDetails.Metadata.FinishedOn.UTC()
	}
	return nil
}

// maxVSALevels bounds verifiedLevels kept from one VSA.
const maxVSALevels = 32

// ParseVSA reads the predicate of a SLSA Verification Summary
// Attestation v1: verifier.id, timeVerified, resourceUri, policy.uri,
// verificationResult (PASSED or FAILED) and verifiedLevels. It checks no
// signature; a VSA without verifier.id, resourceUri or a known result is
// an error.
func ParseVSA(raw json.RawMessage) (*policy.VSA, error) {
	var p struct {
		Verifier struct {
			ID string `json:"id"`
		} `json:"verifier"`
		TimeVerified       *time.Time           `json:"timeVerified"`
		ResourceURI        string               `json:"resourceUri"`
		Policy             struct{ URI string } `json:"policy"`
		VerificationResult string               `json:"verificationResult"`
		VerifiedLevels     []string             `json:"verifiedLevels"`
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, err
	}
	switch {
	case p.Verifier.ID == "":
		return nil, errors.New("no verifier.id")
	case p.ResourceURI == "":
		return nil, errors.New("no resourceUri")
	case p.VerificationResult != "PASSED" && p.VerificationResult != "FAILED":
		return nil, fmt.Errorf("verificationResult %q is neither PASSED nor FAILED", p.VerificationResult)
	}
	v := &policy.VSA{VerifierID: p.Verifier.ID, ResourceURI: p.ResourceURI, Result: p.VerificationResult, PolicyURI: p.Policy.URI}
	if p.TimeVerified != nil {
		v.TimeVerified = p.TimeVerified.UTC()
	}
	for _, l := range p.VerifiedLevels {
		if len(v.VerifiedLevels) == maxVSALevels {
			break
		}
		if l = strings.TrimSpace(l); l != "" && len(l) <= 128 {
			v.VerifiedLevels = append(v.VerifiedLevels, l)
		}
	}
	return v, nil
}

// walkSources collects repository URIs from externalParameters, whose
// shape each build type defines: GitHub Actions puts the repository in
// workflow.repository, container builders in source.uri or a top-level
// "source" or "repository" string.
func walkSources(v any, s *Statement, depth int) {
	if depth > 4 {
		return
	}
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			switch val := x[k].(type) {
			case string:
				if (k == "repository" || k == "source" || k == "uri" || k == "configSource") && isRepository(val) {
					s.addSource(val)
				}
			default:
				walkSources(val, s, depth+1)
			}
		}
	}
}

// isRepository reports whether uri names a source repository rather than
// a package or an image: a git URL, or an https URL of a known forge.
func isRepository(uri string) bool {
	u := strings.ToLower(uri)
	switch {
	case strings.HasPrefix(u, "git+"), strings.HasPrefix(u, "git://"), strings.HasPrefix(u, "ssh://"):
		return true
	case strings.HasPrefix(u, "https://"):
		h := strings.TrimPrefix(u, "https://")
		return strings.HasPrefix(h, "github.com/") || strings.HasPrefix(h, "gitlab.com/") || strings.HasPrefix(h, "bitbucket.org/") || strings.HasSuffix(strings.SplitN(h, "/", 2)[0]+"/", ".git/") || strings.Contains(h, ".git@") || strings.HasSuffix(h, ".git")
	}
	return false
}
