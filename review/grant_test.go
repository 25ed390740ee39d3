package review

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"buildguard.dev/buildguard/apis/v1alpha1"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/policysource"
)

var testGrant = policysource.Grant{
	Namespace: "shop", Image: "registry.example/shop/api@sha256:" + strings.Repeat("a", 64), Reason: "INC-1234",
	Expires: t0.Add(7 * 24 * time.Hour), GrantedBy: "alice", At: t0, DecisionID: "d-1",
}

func TestExceptionCreator(t *testing.T) {
	scheme := runtime.NewScheme()
	c := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme, map[schema.GroupVersionResource]string{v1alpha1.ExceptionResource(): "BuildPolicyExceptionList"})
	// The fake does not generate names as the API server does.
	c.PrependReactor("create", "buildpolicyexceptions", func(a k8stesting.Action) (bool, runtime.Object, error) {
		u := a.(k8stesting.CreateAction).GetObject().(*unstructured.Unstructured)
		u.SetName(u.GetGenerateName() + "x7k2p")
		return false, nil, nil
	})
	name, err := (&ExceptionCreator{Client: c}).Grant(t.Context(), testGrant)
	if err != nil {
		t.Fatal(err)
	}
	if name != "shop/review-x7k2p" {
		t.Errorf("Grant = %q, want shop/review-x7k2p", name)
	}
	got, err := c.Resource(v1alpha1.ExceptionResource()).Namespace("shop").Get(t.Context(), "review-x7k2p", metavOpts)
	if err != nil {
		t.Fatal(err)
	}
	spec, _, _ := unstructured.NestedMap(got.Object, "spec")
	want := map[string]any{"images": []any{testGrant.Image}, "reason": "INC-1234", "expires": "2026-12-08T12:00:00Z", "approvedBy": "alice"}
	if !equalJSON(spec, want) {
		t.Errorf("spec = %v, want %v", spec, want)
	}
	ann := got.GetAnnotations()
	if ann[AnnotationGrantedBy] != "alice" || ann[AnnotationGrantedAt] != "2026-12-01T12:00:00Z" || ann[AnnotationDecision] != "d-1" {
		t.Errorf("annotations %v", ann)
	}
	// What it creates compiles as the CRD source compiles it.
	if _, err := policy.CompileExceptions("spec", []policy.Exception{{Images: []string{testGrant.Image}, Reason: "INC-1234", Expires: "2026-12-08T12:00:00Z"}}); err != nil {
		t.Error(err)
	}
}

// TestExceptionCreatorNameTaken: the API server picks generateName's
// suffix without checking it is free; a collision is tried again.
func TestExceptionCreatorNameTaken(t *testing.T) {
	for _, tc := range []struct {
		name       string
		collisions int
		want       string
		wantErr    string
	}{
		{name: "one collision", collisions: 1, want: "shop/review-2"},
		{name: "always taken", collisions: 100, wantErr: "already exists"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{v1alpha1.ExceptionResource(): "BuildPolicyExceptionList"})
			calls := 0
			c.PrependReactor("create", "buildpolicyexceptions", func(a k8stesting.Action) (bool, runtime.Object, error) {
				calls++
				u := a.(k8stesting.CreateAction).GetObject().(*unstructured.Unstructured).DeepCopy()
				if calls <= tc.collisions {
					return true, nil, apierrors.NewAlreadyExists(v1alpha1.ExceptionResource().GroupResource(), u.GetGenerateName()+"1")
				}
				u.SetName(u.GetGenerateName() + strconv.Itoa(calls))
				return true, u, nil
			})
			got, err := (&ExceptionCreator{Client: c}).Grant(t.Context(), testGrant)
			if got != tc.want || (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("Grant = %q, %v; want %q, error %q", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

var metavOpts = metav1.GetOptions{}

func equalJSON(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}
