package webhook_test

import (
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// The fixture's clock says Thursday 12:00 UTC: outside the window below.
const changeControlPolicy = `apiVersion: buildguard.dev/v1alpha1
kind: Policy
registries:
  allow: ["127.0.0.1:*/acme/*"]
  insecure: ["127.0.0.1:*"]
changeControl:
  windows:
  - {days: [Mon], from: "09:00", to: "10:00", timeZone: UTC}
  changeID:
    pattern: "^CHG-[0-9]+$"
`

func TestChangeControlEveryKind(t *testing.T) {
	f := newFixture(t, changeControlPolicy)
	for _, kind := range allKinds {
		t.Run(kind, func(t *testing.T) {
			obj, gvk := workload(kind, f.clean)
			older, _ := workload(kind, f.reg.Host+"/acme/shop:1.3")

			create := request(t, admissionv1.Create, obj, gvk)
			if resp := f.handler.Review(t.Context(), create); resp.Allowed || !strings.Contains(resp.Result.Message, "[outside-release-window]") {
				t.Errorf("CREATE outside the window = %+v, want denied by outside-release-window", resp.Result)
			}

			same := request(t, admissionv1.Update, obj, gvk)
			same.OldObject = raw(t, obj)
			if resp := f.handler.Review(t.Context(), same); !resp.Allowed {
				t.Errorf("UPDATE without an image change = %+v, want admitted (scaling and restarts are never blocked)", resp.Result)
			}

			changed := request(t, admissionv1.Update, obj, gvk)
			changed.OldObject = raw(t, older)
			if resp := f.handler.Review(t.Context(), changed); resp.Allowed {
				t.Errorf("UPDATE with an image change outside the window was admitted")
			}

			withID := setAnnotation(t, obj, "buildguard.dev/change-id", "CHG-42")
			resp := f.handler.Review(t.Context(), request(t, admissionv1.Create, withID, gvk))
			if !resp.Allowed || resp.AuditAnnotations["change-id"] != "CHG-42" {
				t.Errorf("CREATE with change ID = allowed %v annotations %v, want admitted with change-id CHG-42", resp.Allowed, resp.AuditAnnotations)
			}
		})
	}
}

func TestChangeControlControlledPod(t *testing.T) {
	f := newFixture(t, changeControlPolicy)
	yes := true
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "shop-abc", OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "shop", UID: "u", Controller: &yes}}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: f.clean}}},
	}
	req := request(t, admissionv1.Create, pod, metav1.GroupVersionKind{Version: "v1", Kind: "Pod"})
	req.UserInfo.Username = "system:serviceaccount:kube-system:replicaset-controller"
	if resp := f.handler.Review(t.Context(), req); !resp.Allowed {
		t.Errorf("a ReplicaSet's pod recreated at night = %+v, want admitted: the change was judged at the owner", resp.Result)
	}
	// The same ownerReference written by a user is not believed.
	req.UserInfo.Username = "mallory"
	if resp := f.handler.Review(t.Context(), req); resp.Allowed {
		t.Error("a user's pod with a made-up controller owner skipped change control")
	}
}

// setAnnotation returns a copy of obj with an annotation on its metadata.
func setAnnotation(t *testing.T, obj runtime.Object, k, v string) runtime.Object {
	t.Helper()
	c := obj.DeepCopyObject()
	a, ok := c.(interface{ GetObjectMeta() metav1.Object })
	if !ok {
		t.Fatalf("%T has no object meta", c)
	}
	m := a.GetObjectMeta().(*metav1.ObjectMeta)
	if m.Annotations == nil {
		m.Annotations = map[string]string{}
	}
	m.Annotations[k] = v
	return c
}
