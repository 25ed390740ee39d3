// Package reviewload is what the benchmarks of bench (in-process) and
// bench/shipped (the built binary) share: AdmissionReview bodies of a
// Deployment, the image they run in a loopback registry, a self-signed
// certificate, a do-nothing webhook, the closed-loop load generator and
// the figures of a run.
package reviewload

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
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

// PolicyYAML is a buildguard policy that allows every image of the
// loopback registry and reaches it over plain HTTP.
const PolicyYAML = `apiVersion: buildguard.dev/v1alpha1
kind: Policy
mode: enforce
registries:
  allow: ["127.0.0.1:*/**"]
  insecure: ["127.0.0.1:*"]
`

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

// Resources are the requests and limits of every container.
func Resources() corev1.ResourceRequirements {
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
		Resources:      Resources(),
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")}}, PeriodSeconds: 10},
		SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true),
			Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
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

// Image is an image in the registry.
type Image struct {
	Tag    string // host/repo:v1
	Digest string // sha256:...
}

// ByDigest is the image's reference by digest, host/repo@sha256:...
func (p Image) ByDigest() string {
	repo, _, _ := strings.Cut(p.Tag, ":v1")
	return repo + "@" + p.Digest
}

// PushImage pushes to ref (host/repo:v1, over plain HTTP) a random
// three-layer image whose config was created 30 days ago, with a history
// of harmless build steps.
func PushImage(ctx context.Context, ref string) (Image, error) {
	img, err := random.Image(1024, 3)
	if err != nil {
		return Image{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return Image{}, err
	}
	cf = cf.DeepCopy()
	created := time.Now().Add(-30 * 24 * time.Hour).UTC().Truncate(time.Second)
	at := func(d time.Duration) v1.Time { return v1.Time{Time: created.Add(d)} }
	cf.Created = at(3 * time.Minute)
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.Config.Entrypoint = []string{"/app/server"}
	cf.Config.WorkingDir = "/app"
	cf.Config.User = "65532:65532"
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.source":   "https://git.example.com/shop/web",
		"org.opencontainers.image.revision": "2f9c4d1e8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d",
		"org.opencontainers.image.version":  "v1.4.2",
	}
	cf.History = []v1.History{
		{Created: at(0), CreatedBy: "/bin/sh -c #(nop) ADD file:4b03b5f551e3fbdf47ec609712007327828f7530cc3455c43bbcdcaf449a75a9 in / "},
		{Created: at(0), CreatedBy: `/bin/sh -c #(nop)  CMD ["sh"]`, EmptyLayer: true},
		{Created: at(2 * time.Minute), CreatedBy: "WORKDIR /app", Comment: "buildkit.dockerfile.v0", EmptyLayer: true},
		{Created: at(2 * time.Minute), CreatedBy: "COPY /out/server /app/server # buildkit", Comment: "buildkit.dockerfile.v0"},
		{Created: at(3 * time.Minute), CreatedBy: "COPY config.yaml /app/config.yaml # buildkit", Comment: "buildkit.dockerfile.v0"},
		{Created: at(3 * time.Minute), CreatedBy: "USER 65532:65532", Comment: "buildkit.dockerfile.v0", EmptyLayer: true},
		{Created: at(3 * time.Minute), CreatedBy: `ENTRYPOINT ["/app/server"]`, Comment: "buildkit.dockerfile.v0", EmptyLayer: true},
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return Image{}, err
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return Image{}, err
	}
	if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
		return Image{}, err
	}
	d, err := img.Digest()
	if err != nil {
		return Image{}, err
	}
	return Image{Tag: ref, Digest: d.String()}, nil
}
