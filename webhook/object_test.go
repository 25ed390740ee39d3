package webhook

import (
	"errors"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/schema"
)

func TestDecodeWorkload(t *testing.T) {
	tmpl := `{"metadata":{"labels":{"app":"x"},"annotations":{"a":"t"}},"spec":{"containers":[{"name":"c","image":"r.example/x:1"}]}}`
	for _, tc := range []struct {
		kind, raw, path string
	}{
		{"Pod", `{"metadata":{"name":"n","labels":{"app":"x"}},"spec":{"containers":[{"name":"c","image":"r.example/x:1"}]}}`, "/spec"},
		{"Deployment", `{"metadata":{"name":"n","labels":{"app":"x"}},"spec":{"template":` + tmpl + `}}`, "/spec/template/spec"},
		{"ReplicationController", `{"metadata":{"name":"n","labels":{"app":"x"}},"spec":{"template":` + tmpl + `}}`, "/spec/template/spec"},
		{"CronJob", `{"metadata":{"name":"n","labels":{"app":"x"}},"spec":{"jobTemplate":{"spec":{"template":` + tmpl + `}}}}`, "/spec/jobTemplate/spec/template/spec"},
	} {
		var gvk schema.GroupVersionKind
		for _, k := range Kinds() {
			if k.Kind == tc.kind {
				gvk = k
			}
		}
		w, path, err := DecodeWorkload(gvk, []byte(tc.raw))
		if err != nil {
			t.Fatalf("DecodeWorkload(%s) = %v", tc.kind, err)
		}
		if path != tc.path || w.Kind != tc.kind || w.Name != "n" || w.Labels["app"] != "x" || len(w.Spec.Containers) != 1 || w.Spec.Containers[0].Image != "r.example/x:1" {
			t.Errorf("DecodeWorkload(%s) = %+v, %q; want the workload n at %q", tc.kind, w, path, tc.path)
		}
	}
	var uk *UnsupportedKindError
	if _, _, err := DecodeWorkload(schema.GroupVersionKind{Version: "v1", Kind: "Service"}, []byte(`{}`)); !errors.As(err, &uk) {
		t.Errorf("DecodeWorkload(Service) = %v, want an *UnsupportedKindError", err)
	}
	var de *DecodeError
	if _, _, err := DecodeWorkload(kindPod, []byte(`{"spec":{"containers":"x"}}`)); !errors.As(err, &de) {
		t.Errorf("DecodeWorkload of a bad Pod = %v, want a *DecodeError", err)
	}
}
