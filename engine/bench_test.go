package engine_test

import (
	"context"
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

// BenchmarkEvaluate measures the judgement of a pod whose images are all
// in the caches, as nearly every admission is: an init container and two
// containers, two images by tag and one by digest.
func BenchmarkEvaluate(b *testing.B) {
	reg := testregistry.New(b)
	steps := []string{"/bin/sh -c #(nop) ADD file:0a1b in / ", "RUN /bin/sh -c apt-get update && apt-get install -y ca-certificates # buildkit"}
	reg.Push(b, "acme/shop:1.4", testregistry.Build(b, testregistry.Image{Created: now.Add(-72 * time.Hour), Steps: steps}))
	reg.Push(b, "acme/exporter:2", testregistry.Build(b, testregistry.Image{Created: now.Add(-48 * time.Hour), Steps: steps}))
	d := reg.Push(b, "acme/init:1", testregistry.Build(b, testregistry.Image{Created: now.Add(-96 * time.Hour), Steps: steps}))
	p, err := policy.Compile(policy.Spec{Registries: policy.Registries{Allow: []string{reg.Host + "/acme/*"}, Insecure: []string{"127.0.0.1:*"}}})
	if err != nil {
		b.Fatal(err)
	}
	clock := clocktest.New(now)
	e := &engine.Engine{
		Policies: engine.PolicyFunc(func() *policy.Policy { return p }),
		Resolver: registry.New(registry.WithTransport(http.DefaultTransport), registry.WithClock(clock)),
		Clock:    clock,
	}
	spec := &corev1.PodSpec{
		InitContainers: []corev1.Container{{Name: "init", Image: reg.Host + "/acme/init@" + d.String()}},
		Containers: []corev1.Container{
			{Name: "app", Image: reg.Host + "/acme/shop:1.4"},
			{Name: "metrics", Image: reg.Host + "/acme/exporter:2"},
		},
	}
	w := engine.Workload{Namespace: "shop", Kind: "Deployment", Name: "web", Spec: spec}
	v, err := e.Evaluate(b.Context(), w)
	if err != nil {
		b.Fatal(err)
	}
	for _, iv := range v.Images {
		if iv.Digest == "" || iv.Outcome != policy.OutcomeAllow {
			b.Fatalf("Evaluate: %s judged %q, outcome %s; want every image judged and allowed", iv.Container, iv.Digest, iv.Outcome)
		}
	}
	reg.Reset()
	// The webhook bounds every review by the API server's timeout.
	ctx, cancel := context.WithTimeout(b.Context(), engine.DefaultTimeout)
	defer cancel()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.Evaluate(ctx, w); err != nil {
			b.Fatal(err)
		}
	}
	if n := reg.Count(); n != 0 {
		b.Fatalf("the registry received %d requests (%q), want none: every image cached", n, reg.Requests())
	}
}
