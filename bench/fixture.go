package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
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

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
	"buildguard.dev/buildguard/server"
	"buildguard.dev/buildguard/webhook"
)

// uidPlaceholder stands for the request uid in the body template; it has
// the length of the uids nextUID makes.
const uidPlaceholder = "uid-placeholder-00000000000000000000"

// fixture is everything both targets share: the registry, the servers,
// one HTTP client and the review body.
type fixture struct {
	cfg        config
	profiling  bool
	dir        string
	client     *http.Client
	transport  *http.Transport
	protoMajor int

	registrySrv *httptest.Server
	regCount    *requestCounter
	metrics     *webhook.Metrics

	imageRef    string
	imageDigest string
	warmNote    string

	bodyPrefix, bodySuffix []byte
	uids                   atomic.Uint64

	buildguard, nothing *target

	cancel  context.CancelFunc
	servers sync.WaitGroup
	runErrs chan error
}

func newFixture(ctx context.Context, cfg config) (_ *fixture, err error) {
	f := &fixture{cfg: cfg, profiling: cfg.cpuprofile != "", runErrs: make(chan error, 2)}
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	if f.dir, err = os.MkdirTemp("", "buildguard-bench-"); err != nil {
		return nil, err
	}
	certFile, keyFile, pool, err := writeCertificate(f.dir)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	var protos http.Protocols
	f.protoMajor = 1
	if cfg.http2 {
		protos.SetHTTP2(true)
		f.protoMajor = 2
	} else {
		protos.SetHTTP1(true)
	}
	f.transport = &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		Protocols:           &protos,
		ForceAttemptHTTP2:   cfg.http2,
		MaxIdleConns:        4 * cfg.concurrency,
		MaxIdleConnsPerHost: cfg.concurrency,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 5 * time.Second,
		DisableCompression:  true,
	}
	f.client = &http.Client{Transport: f.transport, Timeout: 10 * time.Second}

	// The registry, on loopback, with the image the Deployment runs.
	f.regCount = &requestCounter{inner: ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))), n: map[string]int64{}}
	f.registrySrv = httptest.NewServer(f.regCount)
	host := strings.TrimPrefix(f.registrySrv.URL, "http://")
	f.imageRef = host + "/bench/app:v1"
	if f.imageDigest, err = pushImage(ctx, f.imageRef); err != nil {
		return nil, fmt.Errorf("pushing the image: %w", err)
	}

	// buildguard as `buildguard serve` wires it, without Kubernetes.
	pf := filepath.Join(f.dir, "policy.yaml")
	if err := os.WriteFile(pf, []byte(policyYAML), 0o600); err != nil {
		return nil, err
	}
	p, err := policy.ReadFile(pf)
	if err != nil {
		return nil, err
	}
	f.metrics = webhook.NewMetrics()
	e := &engine.Engine{
		Policies: engine.PolicyFunc(func() *policy.Policy { return p }),
		Resolver: registry.New(registry.WithObserver(f.metrics)),
		Now:      time.Now,
		Timeout:  engine.DefaultTimeout,
	}
	h := &webhook.Handler{Evaluator: e, Metrics: f.metrics}

	if err := f.buildBody(); err != nil {
		return nil, err
	}

	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f.cancel = cancel
	if f.buildguard, err = f.start(sctx, nameBuildguard, h, certFile, keyFile); err != nil {
		return nil, err
	}
	if f.nothing, err = f.start(sctx, nameNothing, doNothing{}, certFile, keyFile); err != nil {
		return nil, err
	}
	if err := f.warm(ctx); err != nil {
		return nil, err
	}
	return f, nil
}

// policyYAML allows and reaches the loopback registry over plain HTTP.
const policyYAML = `apiVersion: buildguard.dev/v1alpha1
kind: Policy
mode: enforce
registries:
  allow: ["127.0.0.1:*/**"]
  insecure: ["127.0.0.1:*"]
`

// start serves h at /validate with server.Server on a loopback port and
// waits until /healthz answers.
func (f *fixture) start(ctx context.Context, name string, h http.Handler, certFile, keyFile string) (*target, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	if f.profiling {
		h = labelled(name, h)
	}
	mux := http.NewServeMux()
	mux.Handle("/validate", h)
	s := &server.Server{Listener: ln, CertFile: certFile, KeyFile: keyFile, Handler: mux, Log: slog.New(slog.DiscardHandler)}
	f.servers.Go(func() {
		if err := s.Run(ctx); err != nil {
			f.runErrs <- fmt.Errorf("%s server: %w", name, err)
		}
	})
	base := "https://" + ln.Addr().String()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-f.runErrs:
			return nil, err
		default:
		}
		resp, err := f.client.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return &target{name: name, url: base + "/validate"}, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s server not healthy after 10s: %v", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// labelled marks the handler's CPU samples with target=name.
func labelled(name string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pprof.Do(r.Context(), pprof.Labels("target", name), func(ctx context.Context) {
			h.ServeHTTP(w, r.WithContext(ctx))
		})
	})
}

// warm sends one review to each target: buildguard looks the image up
// and caches it. The buildguard answer must allow with verdict "allow" and
// no warnings, so that the runs measure the path they claim to.
func (f *fixture) warm(ctx context.Context) error {
	before := f.snapshot()
	uid := f.nextUID()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.buildguard.url, bytes.NewReader(f.body(uid)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.client.Do(req)
	if err != nil {
		return fmt.Errorf("warm-up review: %w", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("warm-up review: %w", err)
	}
	var rv admissionv1.AdmissionReview
	if err := json.Unmarshal(b, &rv); err != nil || resp.StatusCode != http.StatusOK || rv.Response == nil {
		return fmt.Errorf("warm-up review: status %d: %.300s", resp.StatusCode, b)
	}
	r := rv.Response
	if !r.Allowed || r.AuditAnnotations[webhook.AnnotationVerdict] != string(policy.OutcomeAllow) || len(r.Warnings) > 0 || string(r.UID) != uid {
		return fmt.Errorf("warm-up review: want uid %s allowed with verdict allow and no warnings, got %.600s", uid, b)
	}
	f.warmNote = fmt.Sprintf("allowed, verdict %q, digests %s; the cold lookup made %s",
		r.AuditAnnotations[webhook.AnnotationVerdict], r.AuditAnnotations[webhook.AnnotationDigests], f.snapshot().sub(before).registryString())
	for _, t := range []*target{f.buildguard, f.nothing} {
		if err := f.review(ctx, t, f.nextUID()); err != nil {
			return fmt.Errorf("warm-up review of %s: %w", t.name, err)
		}
	}
	return nil
}

func (f *fixture) close() {
	if f.transport != nil {
		f.transport.CloseIdleConnections()
	}
	if f.cancel != nil {
		f.cancel()
	}
	f.servers.Wait()
	if f.registrySrv != nil {
		f.registrySrv.Close()
	}
	if f.dir != "" {
		os.RemoveAll(f.dir)
	}
}

// nextUID returns a fresh 36-character request uid.
func (f *fixture) nextUID() string {
	return fmt.Sprintf("b0b0b0b0-0000-4000-8000-%012x", f.uids.Add(1))
}

// body returns the review body with request uid.
func (f *fixture) body(uid string) []byte {
	b := make([]byte, 0, len(f.bodyPrefix)+len(uid)+len(f.bodySuffix))
	b = append(b, f.bodyPrefix...)
	b = append(b, uid...)
	return append(b, f.bodySuffix...)
}

func (f *fixture) bodySize() int { return len(f.bodyPrefix) + len(uidPlaceholder) + len(f.bodySuffix) }

// buildBody makes the AdmissionReview template: a CREATE of an apps/v1
// Deployment whose two containers run the image by tag.
func (f *fixture) buildBody() error {
	labels := map[string]string{"app.kubernetes.io/name": "web", "app.kubernetes.io/part-of": "shop"}
	replicas := int32(3)
	probe := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")}}, PeriodSeconds: 10}
	res := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
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
					Containers: []corev1.Container{
						{
							Name: "app", Image: f.imageRef, Args: []string{"--listen=:8080", "--log-format=json"},
							Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
							Env:            []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}, {Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
							Resources:      res,
							ReadinessProbe: probe,
							SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true),
								Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
						},
						{
							Name: "metrics", Image: f.imageRef, Args: []string{"--metrics-only", "--listen=:9090"},
							Ports:     []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP}},
							Resources: res,
						},
					},
				},
			},
		},
	}
	obj, err := json.Marshal(&dep)
	if err != nil {
		return err
	}
	gvk := metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
	gvr := metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:             uidPlaceholder,
			Kind:            gvk,
			Resource:        gvr,
			RequestKind:     &gvk,
			RequestResource: &gvr,
			Name:            "web",
			Namespace:       "bench",
			Operation:       admissionv1.Create,
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
		return err
	}
	parts := bytes.Split(b, []byte(uidPlaceholder))
	if len(parts) != 2 {
		return errors.New("body template: the uid placeholder is not in the body exactly once")
	}
	f.bodyPrefix, f.bodySuffix = parts[0], parts[1]
	return nil
}

func ptr[T any](v T) *T { return &v }

// pushImage pushes a random three-layer image whose config was created 30
// days ago, with a history of harmless build steps, and returns its digest.
func pushImage(ctx context.Context, ref string) (string, error) {
	img, err := random.Image(1024, 3)
	if err != nil {
		return "", err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return "", err
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
		return "", err
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return "", err
	}
	if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
		return "", err
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return d.String(), nil
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

// requestCounter counts registry requests by method and kind of path.
type requestCounter struct {
	inner http.Handler
	mu    sync.Mutex
	n     map[string]int64
}

func (c *requestCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	kind := "other"
	switch p := r.URL.Path; {
	case p == "/v2/" || p == "/v2":
		kind = "/v2/"
	case strings.Contains(p, "/manifests/"):
		kind = "manifest"
	case strings.Contains(p, "/blobs/uploads"):
		kind = "upload"
	case strings.Contains(p, "/blobs/"):
		kind = "blob"
	}
	c.mu.Lock()
	c.n[r.Method+" "+kind]++
	c.mu.Unlock()
	c.inner.ServeHTTP(w, r)
}

// sideEffects are what a run cost besides answering: registry requests
// and buildguard's cache lookups.
type sideEffects struct {
	registry map[string]int64   // "GET manifest" → count
	cache    map[string]float64 // "tag hit" → count
}

func (f *fixture) snapshot() sideEffects {
	s := sideEffects{registry: map[string]int64{}, cache: map[string]float64{}}
	f.regCount.mu.Lock()
	for k, v := range f.regCount.n {
		s.registry[k] = v
	}
	f.regCount.mu.Unlock()
	if f.metrics == nil {
		return s
	}
	mfs, err := f.metrics.Registry().Gather()
	if err != nil {
		return s
	}
	for _, mf := range mfs {
		if mf.GetName() != "buildguard_cache_lookups_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var cache, result string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "cache":
					cache = l.GetValue()
				case "result":
					result = l.GetValue()
				}
			}
			s.cache[cache+" "+result] = m.GetCounter().GetValue()
		}
	}
	return s
}

func (s sideEffects) sub(before sideEffects) sideEffects {
	d := sideEffects{registry: map[string]int64{}, cache: map[string]float64{}}
	for k, v := range s.registry {
		if n := v - before.registry[k]; n != 0 {
			d.registry[k] = n
		}
	}
	for k, v := range s.cache {
		if n := v - before.cache[k]; n != 0 {
			d.cache[k] = n
		}
	}
	return d
}

func (s sideEffects) registryString() string {
	var total int64
	keys := make([]string, 0, len(s.registry))
	for k, v := range s.registry {
		total += v
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, s.registry[k])
	}
	out := fmt.Sprintf("%d registry requests", total)
	if len(parts) > 0 {
		out += " (" + strings.Join(parts, ", ") + ")"
	}
	return out
}

func (s sideEffects) String() string {
	c := func(k string) int64 { return int64(s.cache[k]) }
	return fmt.Sprintf("%s; cache lookups: tag %d hit / %d miss, digest %d hit / %d miss",
		s.registryString(), c("tag hit"), c("tag miss"), c("digest hit"), c("digest miss"))
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
