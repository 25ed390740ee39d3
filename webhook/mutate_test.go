package webhook_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/webhook"
)

func newMutator(f *fixture) *webhook.Mutator {
	return &webhook.Mutator{Evaluator: f.handler.Evaluator, Clock: clocktest.New(now)}
}

// TestMutateGolden keeps the JSON Patch of every workload kind: tags
// pinned to the judged digest and the verdict annotations on the pod
// template. Run with -update after an
// intended change.
func TestMutateGolden(t *testing.T) {
	f := newFixture(t, "")
	m := newMutator(f)
	for _, kind := range allKinds {
		t.Run(kind, func(t *testing.T) {
			obj, gvk := workload(kind, f.clean, f.fresh)
			req := request(t, admissionv1.Create, obj, gvk)
			resp := m.Mutate(t.Context(), req)
			if !resp.Allowed || resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
				t.Fatalf("Mutate = %+v, want allowed with a JSON Patch", resp)
			}
			// The patch applies cleanly to the object the API server sent.
			patched := applyPatch(t, req.Object.Raw, resp.Patch)
			if !strings.Contains(string(patched), f.clean+"@sha256:") {
				t.Errorf("patched object does not pin %s:\n%s", f.clean, patched)
			}
			var pretty []any
			json.Unmarshal(resp.Patch, &pretty)
			got, _ := json.MarshalIndent(pretty, "", "  ")
			s := digestRE.ReplaceAllString(strings.ReplaceAll(string(got), f.reg.Host, "registry.test"), "sha256:…")
			golden := filepath.Join("testdata", "mutate", strings.ToLower(kind)+".golden.json")
			if *update {
				os.MkdirAll(filepath.Dir(golden), 0o755)
				if err := os.WriteFile(golden, []byte(s+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if strings.TrimSpace(string(want)) != s {
				t.Errorf("patch differs from %s (run with -update if intended):\ngot:\n%s\nwant:\n%s", golden, s, want)
			}
		})
	}
}

func TestMutateLeavesAlone(t *testing.T) {
	f := newFixture(t, "")
	m := newMutator(f)
	yes := true
	pinned := f.clean + "@sha256:" + strings.Repeat("a", 64)
	tests := []struct {
		name string
		req  func() *admissionv1.AdmissionRequest
	}{
		{"ReplicaSet's pod with pinned images", func() *admissionv1.AdmissionRequest {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "rs", UID: "u", APIVersion: "apps/v1", Controller: &yes}}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: pinned}}}}
			r := request(t, admissionv1.Create, pod, metav1.GroupVersionKind{Version: "v1", Kind: "Pod"})
			r.UserInfo.Username = "system:serviceaccount:kube-system:replicaset-controller"
			return r
		}},
		{"controller's update of a ReplicaSet still on a tag", func() *admissionv1.AdmissionRequest {
			obj, gvk := workload("ReplicaSet", f.clean)
			obj.(interface{ GetObjectMeta() metav1.Object }).GetObjectMeta().SetOwnerReferences([]metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "d", UID: "u", Controller: &yes}})
			r := request(t, admissionv1.Update, obj, gvk)
			r.OldObject = raw(t, obj)
			r.UserInfo.Username = "system:serviceaccount:kube-system:deployment-controller"
			return r
		}},
		{"update without image change", func() *admissionv1.AdmissionRequest {
			obj, gvk := workload("Deployment", pinned)
			r := request(t, admissionv1.Update, obj, gvk)
			r.OldObject = raw(t, obj)
			return r
		}},
		{"delete", func() *admissionv1.AdmissionRequest {
			obj, gvk := workload("Pod", f.clean)
			return request(t, admissionv1.Delete, obj, gvk)
		}},
		{"unknown kind", func() *admissionv1.AdmissionRequest {
			return &admissionv1.AdmissionRequest{UID: "u", Operation: admissionv1.Create, Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Secret"}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := m.Mutate(t.Context(), tt.req())
			if !resp.Allowed || resp.Patch != nil {
				t.Errorf("Mutate = allowed %v patch %s, want allowed without a patch", resp.Allowed, resp.Patch)
			}
		})
	}
}

func TestMutatePinDigestsOff(t *testing.T) {
	f := newFixture(t, "apiVersion: buildguard.dev/v1alpha1\nkind: Policy\npinDigests: false\nregistries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n  insecure: [\"127.0.0.1:*\"]\n")
	obj, gvk := workload("Deployment", f.clean)
	resp := newMutator(f).Mutate(t.Context(), request(t, admissionv1.Create, obj, gvk))
	if strings.Contains(string(resp.Patch), "/image") || !strings.Contains(string(resp.Patch), "buildguard.dev/verdict") {
		t.Errorf("patch %s: want annotations only", resp.Patch)
	}
}

func applyPatch(t testing.TB, doc, patch []byte) []byte {
	t.Helper()
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatalf("DecodePatch(%s): %v", patch, err)
	}
	out, err := p.Apply(doc)
	if err != nil {
		t.Fatalf("patch %s does not apply: %v", patch, err)
	}
	return out
}
