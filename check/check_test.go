package check

import (
	"context"
	"testing"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/manifest"
	"buildguard.dev/buildguard/policy"
)

func TestFileURI(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{"manifests/base/deployment.yaml", "manifests/base/deployment.yaml"},
		{"./deploy//web.yaml", "deploy/web.yaml"},
		{"../shared/x.yaml", "../shared/x.yaml"},
		{"/srv/repo/a b.yaml", "file:///srv/repo/a%20b.yaml"},
		{"a:b.yaml", "./a:b.yaml"},
		{"-", "stdin"},
	} {
		if got := fileURI(tc.file); got != tc.want {
			t.Errorf("fileURI(%q) = %q, want %q", tc.file, got, tc.want)
		}
	}
}

func TestNamespaces(t *testing.T) {
	s, err := manifest.Parse("ns.yaml", []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {buildguard.dev/mode: audit, env: prod}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	n := NamespacesOf(s)
	ctx := context.Background()
	if l, _ := n.Labels(ctx, "shop"); l["buildguard.dev/mode"] != "audit" || l["env"] != "prod" {
		t.Errorf("Labels(shop) = %v, want the Namespace's", l)
	}
	if l, _ := n.Labels(ctx, "other"); l != nil {
		t.Errorf("Labels(other) = %v, want none", l)
	}
	n.Override = map[string]string{engine.ModeLabel: "enforce"}
	if l, _ := n.Labels(ctx, "shop"); l["buildguard.dev/mode"] != "enforce" || l["env"] != "prod" {
		t.Errorf("Labels(shop) with an override = %v", l)
	}
	if l, _ := n.Labels(ctx, "other"); l["buildguard.dev/mode"] != "enforce" {
		t.Errorf("Labels(other) with an override = %v", l)
	}
	if l := n.Defined["shop"]; l["buildguard.dev/mode"] != "audit" {
		t.Errorf("the override changed the Namespace's own labels: %v", l)
	}
}

// failing is an Evaluator that cannot evaluate.
type failing struct{}

func (failing) Evaluate(ctx context.Context, _ engine.Workload) (policy.Verdict, error) {
	return policy.Verdict{}, context.DeadlineExceeded
}

func TestCheckErrorAndKinds(t *testing.T) {
	s, err := manifest.Parse("w.yaml", []byte(`apiVersion: v1
kind: Pod
metadata: {name: a}
spec: {containers: [{name: c, image: r.example/x:1}]}
---
apiVersion: apps/v1beta2
kind: Deployment
metadata: {name: old}
---
apiVersion: v1
kind: Pod
metadata: {name: bad}
spec: {containers: "nope"}
---
apiVersion: example.com/v1
kind: Deployment
metadata: {name: someone-elses}
`))
	if err != nil {
		t.Fatal(err)
	}
	r, err := (&Checker{Evaluator: failing{}}).Check(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Results) != 3 {
		t.Fatalf("%d results, want 3 (the Deployment of another group is not a workload): %+v", len(r.Results), r.Results)
	}
	if w := r.Results[0].Word(); w != "error" || r.Results[0].Namespace != DefaultNamespace {
		t.Errorf("pod a: %s in %q, want error in %q", w, r.Results[0].Namespace, DefaultNamespace)
	}
	if r.Results[1].Skipped == "" || r.Results[2].Error == "" {
		t.Errorf("apps/v1beta2 Deployment %+v, want skipped; bad pod %+v, want an error", r.Results[1], r.Results[2])
	}
	if !r.Failed() || r.Denied() {
		t.Errorf("Failed() = %v, Denied() = %v; want true, false", r.Failed(), r.Denied())
	}
}
