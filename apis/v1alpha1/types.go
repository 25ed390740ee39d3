// Package v1alpha1 is buildguard's API, group buildguard.dev version
// v1alpha1, as Go types: the ClusterBuildPolicy and BuildPolicyException
// resources (their group, kinds, resources and specs, and the condition
// buildguard writes in their status) and the exceptions file
// (ExceptionList). The policy file's own fields are policy.Spec.
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"buildguard.dev/buildguard/policy"
)

// Group and version of buildguard's resources.
const (
	Group   = "buildguard.dev"
	Version = "v1alpha1"
	// APIVersion is what the resources and files of this version give as
	// their apiVersion.
	APIVersion = Group + "/" + Version
)

// Kinds of this version.
const (
	KindClusterBuildPolicy   = "ClusterBuildPolicy"
	KindBuildPolicyException = "BuildPolicyException"
	KindExceptionList        = "ExceptionList"
)

// Resources of this version, by their plural names.
const (
	PolicyResourceName    = "clusterbuildpolicies"
	ExceptionResourceName = "buildpolicyexceptions"
)

// PolicyResource is the ClusterBuildPolicy resource.
func PolicyResource() schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: Group, Version: Version, Resource: PolicyResourceName}
}

// ExceptionResource is the BuildPolicyException resource.
func ExceptionResource() schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: Group, Version: Version, Resource: ExceptionResourceName}
}

// PolicySpec is the spec of a ClusterBuildPolicy: the fields of a policy
// file and the selectors of what it governs.
type PolicySpec struct {
	policy.Spec `json:",inline"`
	// NamespaceSelector chooses the namespaces the policy governs, by
	// their labels. The default is every namespace.
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	// ObjectSelector chooses the workloads the policy governs, by their
	// own labels. The default is every workload.
	ObjectSelector *metav1.LabelSelector `json:"objectSelector,omitempty"`
}

// ExceptionSpec is the spec of a BuildPolicyException. It applies to
// workloads in its own namespace only.
type ExceptionSpec struct {
	Images     []string `json:"images"`
	Reason     string   `json:"reason"`
	Expires    string   `json:"expires"`
	ApprovedBy string   `json:"approvedBy,omitempty"`
}

// ConditionAccepted is the status condition saying whether buildguard
// accepted a resource; its reason is Valid or Invalid.
const ConditionAccepted = "Accepted"

// ExceptionList is the exceptions file (serve --exceptions-file): the
// namespaced exceptions that go with a policy file, as docs/review.md
// shows it. Its apiVersion is APIVersion and its kind KindExceptionList.
type ExceptionList struct {
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Exceptions []ListedException `yaml:"exceptions"`
}

// ListedException is one exception of an ExceptionList: the fields of an
// ExceptionSpec, its name and namespace, and who granted it in the review
// UI, when, from which decision.
type ListedException struct {
	Name       string   `yaml:"name"`
	Namespace  string   `yaml:"namespace"`
	Images     []string `yaml:"images"`
	Reason     string   `yaml:"reason"`
	Expires    string   `yaml:"expires"`
	ApprovedBy string   `yaml:"approvedBy,omitempty"`
	GrantedBy  string   `yaml:"grantedBy,omitempty"`
	GrantedAt  string   `yaml:"grantedAt,omitempty"`
	Decision   string   `yaml:"decision,omitempty"`
}
