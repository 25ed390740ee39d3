package webhook_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// benchReview is an AdmissionReview CREATE of a Deployment shaped like
// the one go run ./bench sends: two containers running image by tag, with
// probes, resources, env and security contexts that buildguard skips.
func benchReview(b testing.TB, image string) []byte {
	b.Helper()
	labels := map[string]string{"app.kubernetes.io/name": "web", "app.kubernetes.io/part-of": "shop"}
	res := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
	yes, no, three := true, false, int32(3)
	dep := appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Labels: labels, Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": ""}},
		Spec: appsv1.DeploymentSpec{
			Replicas: &three,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "web"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: "web",
					SecurityContext:    &corev1.PodSecurityContext{RunAsNonRoot: &yes, SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
					Containers: []corev1.Container{
						{
							Name: "app", Image: image, Args: []string{"--listen=:8080", "--log-format=json"},
							Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
							Env:            []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}, {Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
							Resources:      res,
							ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")}}, PeriodSeconds: 10},
							SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: &no, ReadOnlyRootFilesystem: &yes,
								Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
						},
						{Name: "metrics", Image: image, Args: []string{"--metrics-only", "--listen=:9090"}, Resources: res},
					},
				},
			},
		},
	}
	gvk := metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
	gvr := metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "0d2d9bd5-8b4e-4a3e-9c2f-7f6b0a1c2d3e", Kind: gvk, Resource: gvr, RequestKind: &gvk, RequestResource: &gvr,
			Name: "web", Namespace: "shop", Operation: admissionv1.Create,
			UserInfo: authenticationv1.UserInfo{Username: "system:serviceaccount:ci:deployer", Groups: []string{"system:serviceaccounts", "system:authenticated"}},
			Object:   raw(b, &dep),
			DryRun:   &no,
			Options:  runtime.RawExtension{Raw: []byte(`{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1","fieldManager":"kubectl"}`)},
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	return body
}

// discardWriter is a ResponseWriter that keeps only the status and the
// size, so that the benchmark measures the handler, not a recorder.
type discardWriter struct {
	h      http.Header
	code   int
	n      int
	sample []byte
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}
func (w *discardWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	if w.sample == nil {
		w.sample = append([]byte(nil), p...)
	}
	w.n += len(p)
	return len(p), nil
}

// BenchmarkServeHTTP measures one cached review of a Deployment through
// ServeHTTP, without HTTPS: decoding, evaluation from the caches, and
// encoding the answer. go run ./bench measures the whole path.
func BenchmarkServeHTTP(b *testing.B) {
	f := newFixture(b, "")
	body := benchReview(b, f.clean)
	m := newMutator(f)
	for _, tt := range []struct {
		name string
		h    http.Handler
		want string
	}{
		{"validate", f.handler, `"allowed":true`},
		{"mutate", m, `"patchType":"JSONPatch"`},
	} {
		b.Run(tt.name, func(b *testing.B) {
			serve := func() *discardWriter {
				r := httptest.NewRequest(http.MethodPost, "/validate?timeout=10s", bytes.NewReader(body))
				r.Header.Set("Content-Type", "application/json")
				w := &discardWriter{h: http.Header{}}
				tt.h.ServeHTTP(w, r)
				return w
			}
			if w := serve(); w.code != http.StatusOK || !strings.Contains(string(w.sample), tt.want) {
				b.Fatalf("ServeHTTP = %d %s, want 200 with %s", w.code, w.sample, tt.want)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			// CPU time per review, the garbage collector's included,
			// says more than ns/op on a machine other work shares.
			cpu0, ok := processCPU()
			for b.Loop() {
				serve()
			}
			if cpu1, ok1 := processCPU(); ok && ok1 {
				b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
			}
		})
	}
}
