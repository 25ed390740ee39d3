package check

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"buildguard.dev/buildguard/apis/v1alpha1"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/manifest"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/policysource"
)

// Namespaces gives namespaces their labels as the manifests define them:
// a Namespace object in the manifests brings its own labels (its
// buildguard.dev/mode, and what policies' namespaceSelectors match);
// other namespaces have Default. It implements engine.Namespaces.
type Namespaces struct {
	// Defined are the labels of the Namespace objects, by name.
	Defined map[string]map[string]string
	// Default are the labels of the namespaces the manifests do not
	// define; nil for none.
	Default map[string]string
	// Override, when set, is laid over every namespace's labels (check
	// --mode sets buildguard.dev/mode everywhere).
	Override map[string]string
}

// NamespacesOf reads the Namespace objects of s.
func NamespacesOf(s *manifest.Stream) *Namespaces {
	n := &Namespaces{Defined: map[string]map[string]string{}}
	for _, o := range s.Objects {
		if o.APIVersion != "v1" || o.Kind != "Namespace" || o.Name == "" {
			continue
		}
		var ns struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
		}
		// A Namespace whose labels do not decode would not be applied
		// either; it gets none here.
		_ = json.Unmarshal(o.JSON, &ns)
		n.Defined[o.Name] = ns.Metadata.Labels
	}
	return n
}

// Labels implements engine.Namespaces.
func (n *Namespaces) Labels(_ context.Context, ns string) (map[string]string, error) {
	l, ok := n.Defined[ns]
	if !ok {
		l = n.Default
	}
	if len(n.Override) == 0 {
		return l, nil
	}
	out := maps.Clone(l)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, n.Override)
	return out, nil
}

// Policies is what judges the manifests: a policy file, or
// ClusterBuildPolicy and BuildPolicyException resources.
type Policies struct {
	engine.Policies
	// All are the policies, to check their trust files.
	All []*policy.Policy
	// CRD is true for ClusterBuildPolicy resources: BuildPolicyExceptions
	// in the manifests then apply, as they would in the cluster.
	CRD bool
}

// LoadPolicies reads path: a policy file (kind Policy), or YAML of
// ClusterBuildPolicy and BuildPolicyException resources (a file or a
// directory of them). With resources, the BuildPolicyExceptions among
// manifests apply too, as they would once applied to a cluster whose
// policies are resources; an exception without a namespace is in ns.
func LoadPolicies(path string, manifests *manifest.Stream, ns string) (*Policies, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	var res *manifest.Stream
	if st.IsDir() {
		if res, err = manifest.ReadPaths([]string{path}, nil); err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		res, err = manifest.Read(path, f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
	}
	resources := buildguardResources(res)
	if len(resources) == 0 {
		if st.IsDir() {
			return nil, fmt.Errorf("policy %s: no ClusterBuildPolicy or BuildPolicyException in this directory", path)
		}
		p, err := policy.ReadFile(path)
		if err != nil {
			return nil, err
		}
		return &Policies{Policies: engine.PolicyFunc(func() *policy.Policy { return p }), All: []*policy.Policy{p}}, nil
	}
	if len(resources) != len(res.Objects) {
		for _, o := range res.Objects {
			if !isBuildguardResource(&o) {
				return nil, fmt.Errorf("policy %s: %s is not a ClusterBuildPolicy or BuildPolicyException", path, o.String())
			}
		}
	}
	if manifests != nil {
		for _, u := range buildguardResources(manifests) {
			if u.GetKind() == v1alpha1.KindBuildPolicyException {
				resources = append(resources, u)
			}
		}
	}
	s, err := policysource.NewStatic(resources, ns)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	if len(s.Policies()) == 0 {
		return nil, fmt.Errorf("policy %s: no ClusterBuildPolicy: nothing would be judged", path)
	}
	return &Policies{Policies: s, All: s.Policies(), CRD: true}, nil
}

func isBuildguardResource(o *manifest.Object) bool {
	return o.APIVersion == v1alpha1.APIVersion && (o.Kind == v1alpha1.KindClusterBuildPolicy || o.Kind == v1alpha1.KindBuildPolicyException)
}

// buildguardResources returns the ClusterBuildPolicies and
// BuildPolicyExceptions of s.
func buildguardResources(s *manifest.Stream) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for i := range s.Objects {
		o := &s.Objects[i]
		if !isBuildguardResource(o) {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(o.JSON); err != nil {
			// Kept as it is: policysource.NewStatic says what is wrong.
			u.Object = map[string]any{"apiVersion": o.APIVersion, "kind": o.Kind, "metadata": map[string]any{"name": o.Name, "namespace": o.Namespace}}
		}
		out = append(out, u)
	}
	return out
}
