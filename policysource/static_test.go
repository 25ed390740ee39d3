package policysource

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

func objects(t *testing.T, docs ...string) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for _, d := range docs {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(d), &u.Object); err != nil {
			t.Fatal(err)
		}
		out = append(out, u)
	}
	return out
}

const (
	prodPolicy = `apiVersion: buildguard.dev/v1alpha1
kind: ClusterBuildPolicy
metadata: {name: prod}
spec:
  mode: enforce
  registries: {allow: ["r.example/*"]}
  namespaceSelector: {matchLabels: {env: prod}}
`
	toolsPolicy = `apiVersion: buildguard.dev/v1alpha1
kind: ClusterBuildPolicy
metadata: {name: a-tools}
spec:
  mode: audit
  registries: {allow: ["tools.example/*"]}
  objectSelector: {matchLabels: {team: tools}}
`
	shopException = `apiVersion: buildguard.dev/v1alpha1
kind: BuildPolicyException
metadata: {name: hotfix, namespace: shop}
spec: {images: ["r.example/hotfix@sha256:0000000000000000000000000000000000000000000000000000000000000000"], reason: INC-1, expires: "2099-01-01T00:00:00Z"}
`
	defaultException = `apiVersion: buildguard.dev/v1alpha1
kind: BuildPolicyException
metadata: {name: hotfix}
spec: {images: ["r.example/*"], reason: INC-2, expires: "2099-01-01T00:00:00Z"}
`
)

func TestStaticSelect(t *testing.T) {
	s, err := NewStatic(objects(t, prodPolicy, toolsPolicy, shopException, defaultException), "default")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ns               string
		nsLabels, labels map[string]string
		policies         []string
		exceptions       int
	}{
		{"shop", map[string]string{"env": "prod"}, nil, []string{"prod"}, 1},
		{"shop", map[string]string{"env": "prod"}, map[string]string{"team": "tools"}, []string{"a-tools", "prod"}, 1},
		{"dev", nil, map[string]string{"team": "tools"}, []string{"a-tools"}, 0},
		{"default", nil, nil, nil, 1},
	} {
		sel, err := s.Select(tc.ns, tc.nsLabels, tc.labels)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, p := range sel.Policies {
			names = append(names, p.Name())
		}
		if strings.Join(names, ",") != strings.Join(tc.policies, ",") || sel.Exceptions.Len() != tc.exceptions {
			t.Errorf("Select(%s, %v, %v) = %v and %d exceptions, want %v and %d", tc.ns, tc.nsLabels, tc.labels, names, sel.Exceptions.Len(), tc.policies, tc.exceptions)
		}
	}
}

func TestStaticErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		docs []string
		want string
	}{
		{"invalid policy", []string{strings.Replace(prodPolicy, "mode: enforce", "mode: sometimes", 1)}, `ClusterBuildPolicy "prod": `},
		{"unknown field", []string{strings.Replace(prodPolicy, "mode: enforce", "mood: enforce", 1)}, "mood"},
		{"twice", []string{prodPolicy, prodPolicy}, "defined twice"},
		{"exception twice", []string{shopException, shopException}, "shop/hotfix is defined twice"},
		{"expired format", []string{strings.Replace(shopException, `"2099-01-01T00:00:00Z"`, "tomorrow", 1)}, "BuildPolicyException shop/hotfix: "},
		{"other kind", []string{"apiVersion: buildguard.dev/v1alpha1\nkind: Policy\nmetadata: {name: x}\n"}, "is not a ClusterBuildPolicy"},
		{"other version", []string{strings.Replace(prodPolicy, "v1alpha1", "v1", 1)}, "want buildguard.dev/v1alpha1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewStatic(objects(t, tc.docs...), "default")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewStatic = %v, want an error with %q", err, tc.want)
			}
		})
	}
}
