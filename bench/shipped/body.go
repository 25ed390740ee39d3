package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
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
// the length of the uids the load generator makes.
const uidPlaceholder = "uid-placeholder-00000000000000000000"

type certPool = x509.CertPool

// pushedImage is an image in the registry.
type pushedImage struct {
	tag    string // host/repo:tag
	digest string // sha256:...
}

func (p pushedImage) byDigest() string {
	repo, _, _ := strings.Cut(p.tag, ":v1")
	return repo + "@" + p.digest
}

// body is the AdmissionReview template of one Deployment shape.
type body struct {
	containers     int
	prefix, suffix []byte
}

func (b *body) with(uid string) []byte {
	out := make([]byte, 0, len(b.prefix)+len(uid)+len(b.suffix))
	out = append(out, b.prefix...)
	out = append(out, uid...)
	return append(out, b.suffix...)
}

func (b *body) size() int { return len(b.prefix) + len(uidPlaceholder) + len(b.suffix) }

// newBody makes the AdmissionReview of a CREATE of an apps/v1 Deployment
// with n containers. With 3 or more the first is an init container.
// Container i runs images[i] (images[0] when same), by tag when i is
// even and by digest when it is odd; with same the second runs it by tag
// too, as in issue 15's "init + 2 containers (tag, tag, digest)".
func newBody(images []pushedImage, n int, same bool) (*body, error) {
	labels := map[string]string{"app.kubernetes.io/name": "web", "app.kubernetes.io/part-of": "shop"}
	replicas := int32(3)
	probe := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")}}, PeriodSeconds: 10}
	res := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
	var spec corev1.PodSpec
	spec.ServiceAccountName = "web"
	spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr(true), SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	for i := range n {
		img := images[0]
		if !same {
			img = images[i]
		}
		ref := img.tag
		if i%2 == 1 && !(same && i == 1) {
			ref = img.byDigest()
		}
		c := corev1.Container{
			Name: fmt.Sprintf("c%d", i), Image: ref, Args: []string{"--listen=:8080", "--log-format=json"},
			Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: int32(8080 + i), Protocol: corev1.ProtocolTCP}},
			Env:            []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}, {Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
			Resources:      res,
			ReadinessProbe: probe,
			SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true),
				Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
		}
		if i == 0 && n >= 3 {
			c.Name, c.ReadinessProbe, c.Ports = "migrate", nil, nil
			spec.InitContainers = append(spec.InitContainers, c)
			continue
		}
		spec.Containers = append(spec.Containers, c)
	}
	dep := appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "bench", Labels: labels, Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": ""}},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "web"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
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
	return &body{containers: n, prefix: parts[0], suffix: parts[1]}, nil
}

func ptr[T any](v T) *T { return &v }

// pushImage pushes a random three-layer image whose config was created 30
// days ago, with a history of harmless build steps, and returns where it is.
func pushImage(ctx context.Context, ref string) (pushedImage, error) {
	img, err := random.Image(1024, 3)
	if err != nil {
		return pushedImage{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return pushedImage{}, err
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
		return pushedImage{}, err
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return pushedImage{}, err
	}
	if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
		return pushedImage{}, err
	}
	d, err := img.Digest()
	if err != nil {
		return pushedImage{}, err
	}
	return pushedImage{tag: ref, digest: d.String()}, nil
}

// doNothing answers every AdmissionReview with allowed: true: the least a
// webhook can do.
type doNothing struct{}

func (doNothing) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
		return
	}
	out := admissionv1.AdmissionReview{
		TypeMeta: review.TypeMeta,
		Response: &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true},
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(&out)
}

// writeCertificate writes a self-signed ECDSA P-256 certificate for
// 127.0.0.1 and its key into dir, and returns a pool that trusts it.
func writeCertificate(dir string) (certFile, keyFile string, pool *x509.CertPool, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return "", "", nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "buildguard-bench"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return "", "", nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", nil, err
	}
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return "", "", nil, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", nil, err
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool, nil
}
