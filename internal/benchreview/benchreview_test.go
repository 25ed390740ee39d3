package benchreview

import (
	"encoding/json"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

func TestNewBody(t *testing.T) {
	migrate := Container("migrate", "127.0.0.1:5000/bench/app-0:v1", 8080)
	b, err := NewBody([]corev1.Container{migrate}, []corev1.Container{Container("c1", "127.0.0.1:5000/bench/app-1:v1", 8081)})
	if err != nil {
		t.Fatal(err)
	}
	var uids UIDs
	uid := uids.Next()
	if next := uids.Next(); next == uid || len(next) != len(uidPlaceholder) {
		t.Errorf("UIDs.Next() = %q after %q, want another of %d characters", next, uid, len(uidPlaceholder))
	}
	raw := b.With(uid)
	if len(raw) != b.Size() {
		t.Errorf("len(With(%q)) = %d, Size() = %d", uid, len(raw), b.Size())
	}
	var rv admissionv1.AdmissionReview
	if err := json.Unmarshal(raw, &rv); err != nil {
		t.Fatalf("With(%q) is not JSON: %v", uid, err)
	}
	if rv.Request == nil || string(rv.Request.UID) != uid || rv.Request.Operation != admissionv1.Create {
		t.Fatalf("With(%q): request %+v, want a CREATE with that uid", uid, rv.Request)
	}
	var dep appsv1.Deployment
	if err := json.Unmarshal(rv.Request.Object.Raw, &dep); err != nil {
		t.Fatal(err)
	}
	spec := dep.Spec.Template.Spec
	if b.Containers != 2 || len(spec.InitContainers) != 1 || len(spec.Containers) != 1 || spec.Containers[0].Image != "127.0.0.1:5000/bench/app-1:v1" {
		t.Errorf("NewBody: %d containers, pod spec %+v", b.Containers, spec)
	}
}
