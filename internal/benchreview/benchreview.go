// Package benchreview makes the AdmissionReview the benchmarks send, a
// CREATE of a hardened apps/v1 Deployment, as a template that takes a
// request uid without encoding the review again. go run ./bench,
// bench/shipped and webhook's BenchmarkServeHTTP send the same review.
package benchreview

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"

	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// uidPlaceholder stands for the request uid in a body template; it has
// the length of the uids UIDs makes.
const uidPlaceholder = "uid-placeholder-00000000000000000000"

// UIDs makes request uids. The zero value is ready to use and safe for
// concurrent use.
type UIDs struct{ n atomic.Uint64 }

// Next returns a fresh 36-character request uid.
func (u *UIDs) Next() string {
	return fmt.Sprintf("b0b0b0b0-0000-4000-8000-%012x", u.n.Add(1))
}

// Body is the AdmissionReview template of one Deployment shape.
type Body struct {
	// Containers is the number of containers, init containers included.
	Containers     int
	prefix, suffix []byte
}

// With returns the review with request uid.
func (b *Body) With(uid string) []byte {
	out := make([]byte, 0, len(b.prefix)+len(uid)+len(b.suffix))
	out = append(out, b.prefix...)
	out = append(out, uid...)
	return append(out, b.suffix...)
}

// Size is the length of the review with a uid of UIDs.
func (b *Body) Size() int { return len(b.prefix) + len(uidPlaceholder) + len(b.suffix) }

// resources are the requests and limits of every container.
func resources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
}

// Container is a web server's container as a hardened Deployment has it:
// arguments, a named port, environment, resources, a readiness probe and a
// restricted security context.
func Container(name, image string, port int32) corev1.Container {
	return corev1.Container{
		Name: name, Image: image, Args: []string{"--listen=:8080", "--log-format=json"},
		Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: port, Protocol: corev1.ProtocolTCP}},
		Env:            []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}, {Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
		Resources:      resources(),
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")}}, PeriodSeconds: 10},
		SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true),
			Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
	}
}

// WebContainers are the containers of a web server's Deployment, both
// running image: app (a Container) and metrics, its exporter.
func WebContainers(image string) []corev1.Container {
	return []corev1.Container{
		Container("app", image, 8080),
		{
			Name: "metrics", Image: image, Args: []string{"--metrics-only", "--listen=:9090"},
			Ports:     []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP}},
			Resources: resources(),
		},
	}
}

// NewBody makes the AdmissionReview of a CREATE of apps/v1 Deployment
// bench/web, 3 replicas, whose pods run initContainers and containers
// as service account web, non-root.
func NewBody(initContainers, containers []corev1.Container) (*Body, error) {
	labels := map[string]string{"app.kubernetes.io/name": "web", "app.kubernetes.io/part-of": "shop"}
	replicas := int32(3)
	dep := appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "bench", Labels: labels, Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": ""}},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "web"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: "web",
					SecurityContext:    &corev1.PodSecurityContext{RunAsNonRoot: ptr(true), SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
					InitContainers:     initContainers,
					Containers:         containers,
				},
			},
		},
	}
	obj, err := json.Marshal(&dep)
	if err != nil {
		return nil, err
	}
	gvk := metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
	gvr := metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: uidPlaceholder, Kind: gvk, Resource: gvr, RequestKind: &gvk, RequestResource: &gvr,
			Name: "web", Namespace: "bench", Operation: admissionv1.Create,
			UserInfo: authenticationv1.UserInfo{
				Username: "system:serviceaccount:ci:deployer",
				Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:ci", "system:authenticated"},
			},
			Object:  runtime.RawExtension{Raw: obj},
			DryRun:  ptr(false),
			Options: runtime.RawExtension{Raw: []byte(`{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1","fieldManager":"kubectl-client-side-apply","fieldValidation":"Strict"}`)},
		},
	}
	b, err := json.Marshal(&review)
	if err != nil {
		return nil, err
	}
	parts := bytes.Split(b, []byte(uidPlaceholder))
	if len(parts) != 2 {
		return nil, errors.New("body template: the uid placeholder is not in the body exactly once")
	}
	return &Body{Containers: len(initContainers) + len(containers), prefix: parts[0], suffix: parts[1]}, nil
}

func ptr[T any](v T) *T { return &v }
