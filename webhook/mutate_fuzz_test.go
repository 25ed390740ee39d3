package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/policy"
)

// FuzzPatch builds random pod specs (as Pods and Deployments) from the
// fuzzer's bytes, patches them, and checks that the patch always applies
// cleanly with a JSON Patch library and changes nothing but images and
// annotations.
func FuzzPatch(f *testing.F) {
	f.Add([]byte{3, 1, 0, 2, 0x80, 1})
	f.Add([]byte{0, 0, 0})
	f.Add([]byte{255, 7, 9, 1, 2, 3, 4, 5, 6, 7, 8})
	f.Add([]byte("nginx:1.27@sha256"))
	f.Fuzz(func(t *testing.T, seed []byte) {
		next := func() byte {
			if len(seed) == 0 {
				return 0
			}
			b := seed[0]
			seed = seed[1:]
			return b
		}
		flags := next()
		var spec corev1.PodSpec
		var images []policy.ImageVerdict
		images0 := []string{"ghcr.io/acme/shop:1.4", "nginx", "ghcr.io/acme/x@sha256:" + fmt.Sprintf("%064x", 7), "localhost:5000/a/b:c", "Bad::Ref", "a~b/c:1"}
		mk := func() (string, policy.ImageVerdict) {
			img := images0[int(next())%len(images0)]
			iv := policy.ImageVerdict{Image: img}
			if next()%4 != 0 {
				iv.Digest = fmt.Sprintf("sha256:%064x", next())
			}
			return img, iv
		}
		for range int(next() % 4) {
			img, iv := mk()
			spec.InitContainers = append(spec.InitContainers, corev1.Container{Name: fmt.Sprint("i", len(images)), Image: img})
			iv.Container = fmt.Sprint("i", len(images))
			images = append(images, iv)
		}
		for range int(next()%4) + 1 {
			img, iv := mk()
			spec.Containers = append(spec.Containers, corev1.Container{Name: fmt.Sprint("c", len(images)), Image: img})
			iv.Container = fmt.Sprint("c", len(images))
			images = append(images, iv)
		}
		for range int(next() % 3) {
			img, iv := mk()
			spec.EphemeralContainers = append(spec.EphemeralContainers, corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: fmt.Sprint("e", len(images)), Image: img}})
			iv.Container = fmt.Sprint("e", len(images))
			images = append(images, iv)
		}
		meta := metav1.ObjectMeta{Name: "w", Labels: map[string]string{"app": "w"}}
		if flags&1 != 0 {
			meta.Annotations = map[string]string{"keep": "me", "buildguard.dev/verdict": "allow", "a/b~c": "x"}
		}
		var raw []byte
		var gvk schema.GroupVersionKind
		if flags&2 != 0 {
			raw, _ = json.Marshal(&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "w"}, Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{ObjectMeta: meta, Spec: spec}}})
			gvk = kindDeployment
		} else {
			raw, _ = json.Marshal(&corev1.Pod{ObjectMeta: meta, Spec: spec})
			gvk = kindPod
		}
		if flags&4 != 0 {
			// An object whose JSON has no metadata for the pods at all.
			var m map[string]any
			json.Unmarshal(raw, &m)
			if gvk == kindDeployment {
				delete(m["spec"].(map[string]any)["template"].(map[string]any), "metadata")
			} else {
				delete(m, "metadata")
			}
			raw, _ = json.Marshal(m)
		}
		obj, err := decodeWorkload(gvk, raw)
		if err != nil {
			t.Fatal(err)
		}
		obj.metaMissing = !pointerExists(raw, obj.metaPath)
		v := policy.Verdict{Outcome: policy.OutcomeAllow, Allowed: true, Images: images, Pin: flags&8 == 0}
		ops := Patch(obj, engine.Workload{Spec: obj.spec, Operation: "CREATE"}, v, time.Unix(1_800_000_000, 0))
		pb, _ := json.Marshal(ops)
		p, err := jsonpatch.DecodePatch(pb)
		if err != nil {
			t.Fatalf("patch %s does not decode: %v", pb, err)
		}
		out, err := p.Apply(raw)
		if err != nil {
			t.Fatalf("patch %s does not apply to %s: %v", pb, raw, err)
		}
		// Nothing but images and annotations changed.
		after, err := decodeWorkload(gvk, out)
		if err != nil {
			t.Fatalf("patched object does not decode: %v", err)
		}
		// Compare the whole typed objects with images and pod annotations
		// cleared: nothing else may differ.
		strip := func(doc []byte) []byte {
			var spec *corev1.PodSpec
			var meta *metav1.ObjectMeta
			var v any
			if gvk == kindDeployment {
				d := &appsv1.Deployment{}
				if err := json.Unmarshal(doc, d); err != nil {
					t.Fatal(err)
				}
				spec, meta, v = &d.Spec.Template.Spec, &d.Spec.Template.ObjectMeta, d
			} else {
				p := &corev1.Pod{}
				if err := json.Unmarshal(doc, p); err != nil {
					t.Fatal(err)
				}
				spec, meta, v = &p.Spec, &p.ObjectMeta, p
			}
			for i := range spec.InitContainers {
				spec.InitContainers[i].Image = ""
			}
			for i := range spec.Containers {
				spec.Containers[i].Image = ""
			}
			for i := range spec.EphemeralContainers {
				spec.EphemeralContainers[i].Image = ""
			}
			meta.Annotations = nil
			b, _ := json.Marshal(v)
			return b
		}
		if !bytes.Equal(strip(raw), strip(out)) {
			t.Fatalf("patch %s changed more than images and annotations", pb)
		}
		// Every image is pinned exactly when it had no digest and one is known.
		got := engine.Containers(after.spec)
		for i, iv := range images {
			want := iv.Image
			if pinned, ok := pin(iv.Image, iv.Digest); ok && v.Pin {
				want = pinned
			}
			if got[i].Image != want {
				t.Fatalf("image %d = %q, want %q", i, got[i].Image, want)
			}
		}
		ann := after.meta.Annotations
		if after.template != nil {
			ann = after.template.Annotations
		}
		if ann[AnnotationPodVerdict] != "allow" {
			t.Fatalf("verdict annotation = %q", ann[AnnotationPodVerdict])
		}
		if flags&1 != 0 && flags&4 == 0 && !flagsKept(ann) {
			t.Fatalf("existing annotations lost: %v", ann)
		}
	})
}

func flagsKept(ann map[string]string) bool { return ann["keep"] == "me" && ann["a/b~c"] == "x" }
