package policy

import (
	"strings"
	"testing"
	"time"
)

// TestFreshnessTimeSource: fresh-image judges the earliest time the
// digest provably existed, whatever config created claims, and says
// which time it used.
func TestFreshnessTimeSource(t *testing.T) {
	p := mustCompile(t, Spec{
		Registries:   Registries{Allow: []string{"ghcr.io/**"}},
		Signatures:   Signatures{Keys: []string{"/k.pub"}, IgnoreTlog: true},
		Provenance:   ProvenanceRequirements{Builders: []string{"https://builder.example/*"}},
		NodeEvidence: &NodeEvidence{ApprovedBuildNodes: []string{"ci-*"}},
	})
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	recent := now.Add(-30 * time.Second)
	sig := func(at time.Time, src string) Signature {
		return Signature{On: "sha256:m", Verified: true, KeyFingerprint: "sha256:k", SignedAt: at, SignedAtSource: src}
	}
	att := func(builder string, finished time.Time) Attestation {
		return Attestation{Verified: true, PredicateType: PredicateSLSAv1, BuilderID: builder, SubjectDigests: []string{"sha256:m"}, FinishedOn: finished}
	}
	build := func(node string, at time.Time) BuildEvidence {
		return BuildEvidence{Source: "agent", Node: node, Tool: "docker", ImageID: "sha256:c", MatchedBy: "image-id", Started: at.Add(-time.Minute), Finished: at}
	}
	tests := []struct {
		name       string
		created    time.Time
		pv         *Provenance
		builds     []BuildEvidence
		wantRules  string
		wantSource string // of the fresh-image finding
	}{
		{"old created, nothing else: config", old, nil, nil, "", ""},
		{"recent created, nothing else: config", recent, nil, nil, "fresh-image/deny", TimeSourceConfig},
		{"old created, signed seconds ago in the log", old, &Provenance{Signatures: []Signature{sig(recent, TimeSourceTransparencyLog)}}, nil,
			"fresh-image/deny", TimeSourceTransparencyLog},
		{"old created, timestamped seconds ago", old, &Provenance{Signatures: []Signature{sig(recent, TimeSourceTimestampAuthority)}}, nil,
			"fresh-image/deny", TimeSourceTimestampAuthority},
		{"recent created, signed a day ago: the earliest proof wins", recent, &Provenance{Signatures: []Signature{sig(now.Add(-24*time.Hour), TimeSourceTransparencyLog)}}, nil,
			"", ""},
		{"an unverified signature's time proves nothing", old, &Provenance{Signatures: []Signature{func() Signature { s := sig(recent, TimeSourceTransparencyLog); s.Verified = false; return s }()}}, nil,
			"", ""},
		{"attested build a day ago beats a signature seconds ago", recent, &Provenance{
			Signatures: []Signature{sig(recent, TimeSourceTransparencyLog)}, Attestations: []Attestation{att("https://builder.example/v1", now.Add(-24*time.Hour))}}, nil,
			"", ""},
		{"attested build seconds ago", old, &Provenance{Attestations: []Attestation{att("https://builder.example/v1", recent)}}, nil,
			"fresh-image/deny", TimeSourceAttestation},
		{"an unapproved builder's finish time is not believed", old, &Provenance{Attestations: []Attestation{att("https://evil.example/b", recent)}}, nil,
			"unapproved-builder/deny", ""},
		{"old created, a worker built it seconds ago", old, nil, []BuildEvidence{build("worker-1", recent)},
			"fresh-image/deny inconsistent-created-time/deny host-built/deny", TimeSourceNodeReport},
		{"old created, an approved node rebuilt it seconds ago: not a time source", old, nil, []BuildEvidence{build("ci-1", recent)},
			"", ""},
		{"epoch-zero created and no other time: unknown, not fresh", time.Unix(0, 0), nil, nil, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Container{Image: "ghcr.io/acme/shop:1", Resolved: image(tt.created), Builds: tt.builds}
			if tt.pv != nil {
				c.Provenance = map[string]*Provenance{"": tt.pv}
			}
			v := Decide(p, pod(c))
			if got := strings.Join(rules(v), " "); got != tt.wantRules {
				t.Fatalf("Decide = %q, want %q; findings %+v", got, tt.wantRules, v.Images[0].Findings)
			}
			for _, f := range v.Images[0].Findings {
				if f.Rule != RuleFreshImage {
					continue
				}
				if f.Evidence["timeSource"] != tt.wantSource {
					t.Errorf("fresh-image evidence %v, want timeSource %s", f.Evidence, tt.wantSource)
				}
				if tt.wantSource != TimeSourceConfig && f.Evidence["configCreated"] != tt.created.UTC().Format(time.RFC3339) {
					t.Errorf("fresh-image evidence %v, want configCreated %s beside the trusted time", f.Evidence, tt.created.UTC().Format(time.RFC3339))
				}
				if !strings.Contains(f.Message, tt.wantSource) && tt.wantSource != TimeSourceConfig {
					t.Errorf("fresh-image message %q does not name its time source %s", f.Message, tt.wantSource)
				}
			}
		})
	}
}

// TestInconsistentCreatedTime: metadata that contradicts config created
// is flagged and denies by default, except where a reproducible build
// explains it.
func TestInconsistentCreatedTime(t *testing.T) {
	spec := Spec{
		Registries:   Registries{Allow: []string{"ghcr.io/**"}},
		Signatures:   Signatures{Keys: []string{"/k.pub"}, IgnoreTlog: true},
		Provenance:   ProvenanceRequirements{Builders: []string{"https://builder.example/*"}, Sources: []string{"github.com/acme/*"}},
		NodeEvidence: &NodeEvidence{ApprovedBuildNodes: []string{"ci-*"}},
	}
	p := mustCompile(t, spec)
	created := now.Add(-48 * time.Hour)
	withHistory := func(created time.Time, steps ...time.Time) *Image {
		img := image(created)
		for i, s := range steps {
			img.Platforms[0].History = append(img.Platforms[0].History, History{Created: s, CreatedBy: "RUN step " + string(rune('a'+i))})
		}
		return img
	}
	vouch := &Provenance{Attestations: []Attestation{{Verified: true, PredicateType: PredicateSLSAv02, BuilderID: "https://builder.example/v1",
		Sources: []string{"git+https://github.com/acme/shop@refs/heads/main"}, SubjectDigests: []string{"sha256:m"}}}}
	unapproved := &Provenance{Attestations: []Attestation{{Verified: true, PredicateType: PredicateSLSAv02, BuilderID: "https://evil.example/b",
		Sources: []string{"git+https://github.com/acme/shop@refs/heads/main"}, SubjectDigests: []string{"sha256:m"}}}}
	build := func(node string, started time.Time) []BuildEvidence {
		return []BuildEvidence{{Source: "agent", Node: node, Tool: "docker", ImageID: "sha256:c", MatchedBy: "image-id", Started: started, Finished: started.Add(time.Minute)}}
	}
	tests := []struct {
		name   string
		img    *Image
		pv     *Provenance
		builds []BuildEvidence
		want   string // rules
		reason string
	}{
		{"history before created", withHistory(created, created.Add(-time.Hour), created.Add(-time.Minute)), nil, nil, "", ""},
		{"history within maxClockSkew after created", withHistory(created, created.Add(30*time.Second)), nil, nil, "", ""},
		{"a step dated after created", withHistory(created, created.Add(-time.Hour), now.Add(-time.Hour)), nil, nil,
			"inconsistent-created-time/deny", "history-after-created"},
		{"a step after epoch-zero created: says nothing", withHistory(time.Unix(0, 0), now.Add(-time.Hour)), nil, nil, "", ""},
		{"a step after created, vouched for by provenance from an approved builder", withHistory(created, now.Add(-time.Hour)), vouch, nil, "", ""},
		{"a step after created, provenance from an unapproved builder", withHistory(created, now.Add(-time.Hour)), unapproved, nil,
			"inconsistent-created-time/deny unapproved-builder/deny", "history-after-created"},
		{"created before a worker started building it", image(created), nil, build("worker-2", now.Add(-time.Hour)),
			"inconsistent-created-time/deny host-built/deny", "created-before-build"},
		{"created while the worker built it", image(now.Add(-time.Hour)), nil, build("worker-2", now.Add(-time.Hour-30*time.Second)),
			"host-built/deny", ""},
		{"created before an approved node rebuilt it (cached)", image(created), nil, build("ci-7", now.Add(-time.Hour)), "", ""},
		{"created before a worker built it, vouched for by provenance (reproducible)", image(created), vouch, build("worker-2", now.Add(-time.Hour)),
			"host-built/deny", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Container{Image: "ghcr.io/acme/shop:1", Resolved: tt.img, Builds: tt.builds}
			if tt.pv != nil {
				c.Provenance = map[string]*Provenance{"": tt.pv}
			}
			v := Decide(p, pod(c))
			if got := strings.Join(rules(v), " "); got != tt.want {
				t.Fatalf("Decide = %q, want %q; findings %+v", got, tt.want, v.Images[0].Findings)
			}
			if tt.reason == "" {
				return
			}
			f := v.Images[0].Findings[0]
			if f.Evidence["reason"] != tt.reason || f.Evidence["created"] != tt.img.Platforms[0].Created.UTC().Format(time.RFC3339) || f.Summary == string(f.Rule) {
				t.Errorf("finding %+v, want reason %s and the created time in the evidence, and a summary", f, tt.reason)
			}
		})
	}
	// Configurable like any rule.
	spec.Rules = map[RuleID]Action{RuleInconsistentCreatedTime: ActionWarn}
	v := Decide(mustCompile(t, spec), pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: withHistory(created, now.Add(-time.Hour))}))
	if got := strings.Join(rules(v), " "); got != "inconsistent-created-time/warn" {
		t.Errorf("Decide with rules.inconsistent-created-time: warn = %q", got)
	}
}
