package app

import (
	"errors"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"buildguard.dev/buildguard/apis/v1alpha1"
)

// TestScanReadOnlyPolicies: a scan reads ClusterBuildPolicies and
// BuildPolicyExceptions through a client that refuses to write their
// status, so a policy it cannot accept here (a trust file missing on a
// laptop) is not marked Invalid in the cluster.
func TestScanReadOnlyPolicies(t *testing.T) {
	policyObj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "buildguard.dev/v1alpha1", "kind": "ClusterBuildPolicy",
		"metadata": map[string]any{"name": "default"},
	}}
	exceptionObj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "buildguard.dev/v1alpha1", "kind": "BuildPolicyException",
		"metadata": map[string]any{"name": "hotfix", "namespace": "shop"},
	}}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		v1alpha1.PolicyResource():    "ClusterBuildPolicyList",
		v1alpha1.ExceptionResource(): "BuildPolicyExceptionList",
	}, policyObj, exceptionObj)
	ro := readOnly{dyn}
	if _, err := ro.Resource(v1alpha1.PolicyResource()).UpdateStatus(t.Context(), policyObj, metav1.UpdateOptions{}); !errors.Is(err, errReadOnly) {
		t.Errorf("UpdateStatus of a ClusterBuildPolicy = %v, want errReadOnly", err)
	}
	if _, err := ro.Resource(v1alpha1.ExceptionResource()).Namespace("shop").UpdateStatus(t.Context(), exceptionObj, metav1.UpdateOptions{}); !errors.Is(err, errReadOnly) {
		t.Errorf("UpdateStatus of a BuildPolicyException = %v, want errReadOnly", err)
	}
	for _, a := range dyn.Actions() {
		t.Errorf("a refused write reached the client: %s %s", a.GetVerb(), a.GetResource().Resource)
	}
	// Reads go through.
	l, err := ro.Resource(v1alpha1.PolicyResource()).List(t.Context(), metav1.ListOptions{})
	if err != nil || len(l.Items) != 1 {
		t.Errorf("List = %v, %v; want the one policy", l, err)
	}
	if _, err := ro.Resource(v1alpha1.ExceptionResource()).Namespace("shop").Get(t.Context(), "hotfix", metav1.GetOptions{}); err != nil {
		t.Errorf("Get = %v", err)
	}
}

// TestNamespaceCache: a scan reads each namespace's labels from the API
// server once.
func TestNamespaceCache(t *testing.T) {
	cs := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"team": "web"}}})
	n := &namespaceCache{client: cs}
	for range 3 {
		l, err := n.Labels(t.Context(), "shop")
		if err != nil || l["team"] != "web" {
			t.Fatalf("Labels(shop) = %v, %v; want team=web", l, err)
		}
	}
	if _, err := n.Labels(t.Context(), "gone"); err == nil {
		t.Errorf("Labels(gone) = nil error, want the API server's not found")
	}
	var gets []string
	for _, a := range cs.Actions() {
		if g, ok := a.(k8stesting.GetAction); ok {
			gets = append(gets, g.GetName())
		}
	}
	if want := []string{"shop", "gone"}; !slices.Equal(gets, want) {
		t.Errorf("gets of namespaces %q, want %q", gets, want)
	}
}
