package engine_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/internal/testregistry"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
)

// allowEngine is an engine whose policy admits what it cannot look up
// (failurePolicy allow).
func allowEngine(t *testing.T, allow string) *engine.Engine {
	t.Helper()
	p, err := policy.Compile(policy.Spec{FailurePolicy: policy.FailAllow, Registries: policy.Registries{Allow: []string{allow}, Insecure: []string{"127.0.0.1:*"}}})
	if err != nil {
		t.Fatal(err)
	}
	clock := clocktest.New(now)
	return &engine.Engine{
		Policies: engine.PolicyFunc(func() *policy.Policy { return p }),
		Resolver: registry.New(registry.WithTransport(http.DefaultTransport), registry.WithClock(clock)),
		Clock:    clock,
	}
}

// TestImagesTooLargeForOneWorkload: the images of one workload may hold
// only so much memory. Past it the rest are unresolvable (too-large) and
// the workload is denied, even under failurePolicy allow: an attacker
// cannot turn the bound into a lookup failure that admits.
func TestImagesTooLargeForOneWorkload(t *testing.T) {
	reg := testregistry.New(t)
	spec := bigImages(t, reg)
	e := allowEngine(t, reg.Host+"/acme/*")
	v, err := e.Evaluate(t.Context(), engine.Workload{Namespace: "shop", Kind: "Pod", Spec: &spec})
	if err != nil {
		t.Fatal(err)
	}
	for _, iv := range v.Images {
		if iv.Digest == "" || iv.Outcome != policy.OutcomeAllow {
			t.Fatalf("with the default bound: %s judged %q, outcome %s; want every image judged and allowed", iv.Container, iv.Digest, iv.Outcome)
		}
	}

	// Room for two or three of the six, not more.
	img, err := e.Resolver.Resolve(t.Context(), registry.Request{Ref: reg.Ref(t, "acme/big:0"), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	e = allowEngine(t, reg.Host+"/acme/*")
	e.MaxImageBytes = registry.ImageBytes(img) * 5 / 2
	v, err = e.Evaluate(t.Context(), engine.Workload{Namespace: "shop", Kind: "Pod", Spec: &spec})
	if err != nil {
		t.Fatal(err)
	}
	judged, tooLarge := tooLargeCounts(t, v)
	if v.Allowed || len(judged) > 2 || tooLarge < 4 || len(judged)+tooLarge != 6 {
		t.Errorf("with a bound: allowed %v, %d judged, %d too large; want denied, at most 2 judged, the others too large", v.Allowed, len(judged), tooLarge)
	}
}

// TestMetadataAddressIsAFinding: an image whose registry is a metadata
// address in a form resolvers accept is refused by policy — never
// contacted, and denied even under failurePolicy allow and a policy that
// allows every registry — not admitted as a registry that is down.
func TestMetadataAddressIsAFinding(t *testing.T) {
	e := allowEngine(t, "**")
	spec := &corev1.PodSpec{}
	for i, img := range []string{"2852039166:80/acme/shop:1", "0xa9fea9fe:80/acme/shop:1", "0251.0376.0251.0376:80/acme/shop:1", "169.254.169.254.:80/acme/shop:1"} {
		spec.Containers = append(spec.Containers, corev1.Container{Name: fmt.Sprint("c", i), Image: img})
	}
	v, err := e.Evaluate(t.Context(), engine.Workload{Namespace: "shop", Kind: "Pod", Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	if v.Allowed {
		t.Errorf("Evaluate allowed a Pod of metadata-address images: %+v", v)
	}
	for _, iv := range v.Images {
		if len(iv.Findings) != 1 || iv.Findings[0].Rule != policy.RuleUnapprovedRegistry || iv.Findings[0].Evidence["forbiddenAddress"] != true {
			t.Errorf("%s (%s): findings %+v, want one unapproved-registry with forbiddenAddress", iv.Container, iv.Image, iv.Findings)
		}
	}
}

// TestImagesTooLargeFromTheCaches: the bound holds as well for images
// judged from the caches, and for a workload of cached and uncached
// images: once the cached ones take the room, the lookups of the others
// are ended, and those images are too-large, not a registry failure.
func TestImagesTooLargeFromTheCaches(t *testing.T) {
	reg := testregistry.New(t)
	spec := bigImages(t, reg)
	one, err := allowEngine(t, reg.Host+"/acme/*").Resolver.Resolve(t.Context(), registry.Request{Ref: reg.Ref(t, "acme/big:0"), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		// cached is how many of the containers' images, the first ones,
		// are in the caches.
		cached int
		// judged are the containers judged: those the room holds.
		judged int
	}{
		{"all cached", 6, 2},
		{"the first three cached", 3, 2},
		{"the first cached", 1, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := allowEngine(t, reg.Host+"/acme/*")
			first := spec
			first.Containers = spec.Containers[:tt.cached]
			if _, err := e.Evaluate(t.Context(), engine.Workload{Namespace: "shop", Kind: "Pod", Spec: &first}); err != nil {
				t.Fatal(err)
			}
			e.MaxImageBytes = registry.ImageBytes(one) * 5 / 2
			reg.Reset()
			v, err := e.Evaluate(t.Context(), engine.Workload{Namespace: "shop", Kind: "Pod", Spec: &spec})
			if err != nil {
				t.Fatal(err)
			}
			judged, tooLarge := tooLargeCounts(t, v)
			if v.Allowed || len(judged) > tt.judged || tooLarge != 6-len(judged) {
				t.Errorf("allowed %v, judged %q, %d too large; want denied, at most %d judged, the others too large", v.Allowed, judged, tooLarge, tt.judged)
			}
		})
	}
}

// bigImages pushes six images of 20 steps of 1 KB each to reg, acme/big:0
// to acme/big:5, and returns a pod spec with a container of each.
func bigImages(t *testing.T, reg *testregistry.Registry) corev1.PodSpec {
	t.Helper()
	steps := make([]string, 20)
	for i := range steps {
		steps[i] = fmt.Sprintf("RUN /bin/sh -c echo %d %s", i, strings.Repeat("a", 1000))
	}
	var spec corev1.PodSpec
	for i := range 6 {
		img := testregistry.Build(t, testregistry.Image{Created: now.Add(-time.Duration(i+24) * time.Hour), Steps: steps})
		reg.Push(t, fmt.Sprintf("acme/big:%d", i), img)
		spec.Containers = append(spec.Containers, corev1.Container{Name: fmt.Sprint("c", i), Image: fmt.Sprintf("%s/acme/big:%d", reg.Host, i)})
	}
	return spec
}

// tooLargeCounts returns the containers of v whose image was judged and
// how many were too large; a lookup failure fails t: the bound must
// never show as one.
func tooLargeCounts(t *testing.T, v policy.Verdict) (judged []string, tooLarge int) {
	t.Helper()
	for _, iv := range v.Images {
		if iv.Digest != "" {
			judged = append(judged, iv.Container)
		}
		for _, f := range iv.Findings {
			switch {
			case f.Rule == policy.RuleUnresolvableImage && f.Evidence["reason"] == string(policy.ErrTooLarge):
				tooLarge++
			case f.Rule == policy.RuleRegistryUnavailable:
				t.Errorf("%s: %s, want no lookup failure", iv.Container, f.Message)
			}
		}
	}
	return judged, tooLarge
}
