package policysource

import (
	"fmt"
	"sort"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"

	"buildguard.dev/buildguard/apis/v1alpha1"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/policy"
)

// Static holds ClusterBuildPolicies and BuildPolicyExceptions read from
// files rather than from a cluster — what `buildguard check` judges
// manifests with — and selects them for workloads as CRD does. It
// implements engine.Policies.
type Static struct {
	policies   []*compiledPolicy // by name
	names      []string
	exceptions map[string]policy.Exceptions // by namespace
}

// NewStatic compiles objs, each a ClusterBuildPolicy or a
// BuildPolicyException of version v1alpha1, as the server would accept
// them; the first that it would reject is an error naming it. An
// exception without a namespace is in namespace defaultNamespace, as
// kubectl would create it. Two policies, or two exceptions in one
// namespace, with the same name are an error: in a cluster the second
// would replace the first.
func NewStatic(objs []*unstructured.Unstructured, defaultNamespace string) (*Static, error) {
	s := &Static{exceptions: map[string]policy.Exceptions{}}
	byName := map[string]*compiledPolicy{}
	seen := map[string]bool{}
	for _, u := range objs {
		if u.GetAPIVersion() != v1alpha1.APIVersion {
			return nil, fmt.Errorf("%s %q: apiVersion %q, want %s", u.GetKind(), u.GetName(), u.GetAPIVersion(), v1alpha1.APIVersion)
		}
		switch u.GetKind() {
		case v1alpha1.KindClusterBuildPolicy:
			if byName[u.GetName()] != nil {
				return nil, fmt.Errorf("ClusterBuildPolicy %q is defined twice", u.GetName())
			}
			cp, err := compilePolicy(u)
			if err != nil {
				return nil, fmt.Errorf("ClusterBuildPolicy %q: %w", u.GetName(), err)
			}
			byName[u.GetName()] = cp
		case v1alpha1.KindBuildPolicyException:
			if u.GetNamespace() == "" {
				u = u.DeepCopy()
				u.SetNamespace(defaultNamespace)
			}
			key := u.GetNamespace() + "/" + u.GetName()
			if seen[key] {
				return nil, fmt.Errorf("BuildPolicyException %s is defined twice", key)
			}
			seen[key] = true
			x, _, err := compileException(u)
			if err != nil {
				return nil, fmt.Errorf("BuildPolicyException %s: %w", key, err)
			}
			s.exceptions[u.GetNamespace()] = s.exceptions[u.GetNamespace()].Join(x)
		default:
			return nil, fmt.Errorf("%s %q is not a ClusterBuildPolicy or a BuildPolicyException", u.GetKind(), u.GetName())
		}
	}
	for n := range byName {
		s.names = append(s.names, n)
	}
	sort.Strings(s.names)
	for _, n := range s.names {
		s.policies = append(s.policies, byName[n])
	}
	return s, nil
}

// Policies returns the compiled policies, by name.
func (s *Static) Policies() []*policy.Policy {
	out := make([]*policy.Policy, len(s.policies))
	for i, cp := range s.policies {
		out[i] = cp.p
	}
	return out
}

// Select implements engine.Policies as CRD.Select does: the policies
// whose selectors match, in name order, and the namespace's exceptions.
func (s *Static) Select(namespace string, nsLabels, objLabels map[string]string) (engine.Selection, error) {
	var sel engine.Selection
	for _, cp := range s.policies {
		if cp.ns.Matches(labels.Set(nsLabels)) && cp.obj.Matches(labels.Set(objLabels)) {
			sel.Policies = append(sel.Policies, cp.p)
		}
	}
	sel.Exceptions = s.exceptions[namespace]
	return sel, nil
}
