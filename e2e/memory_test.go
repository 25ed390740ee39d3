package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"buildguard.dev/buildguard/internal/selfsigned"
)

// memoryLimit is the memory limit of the shipped Deployment
// (manifests/base/deployment.yaml).
const memoryLimit = 512 << 20

// hostileRegistry serves, for any repository, the manifests and configs
// its images are made of, generated again for each request so the test
// process does not hold them. It listens on several loopback ports: a
// Pod's images on several registries get around a per-registry bound.
type hostileRegistry struct {
	hosts []string
	// images, by manifest digest: how to make the manifest and its config.
	images  map[string]hostileImage
	configs map[string]hostileImage // by config digest
	// oversized manifests are served for every digest not in images:
	// this many bytes, with a Content-Length unless chunked.
	oversized int
	chunked   bool
}

type hostileImage struct {
	manifest func() []byte
	config   func() []byte
}

func (h *hostileRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case p == "/v2/":
		return
	case strings.Contains(p, "/manifests/"):
		d := p[strings.LastIndex(p, "/")+1:]
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", d)
		if img, ok := h.images[d]; ok {
			b := img.manifest()
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			if r.Method != http.MethodHead {
				w.Write(b)
			}
			return
		}
		if !h.chunked {
			w.Header().Set("Content-Length", strconv.Itoa(h.oversized))
		}
		if r.Method == http.MethodHead {
			return
		}
		// Valid JSON all along: a client reading it whole gets an image
		// manifest with a 60 MB annotation.
		prefix := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[],"annotations":{"pad":"`
		io.WriteString(w, prefix)
		pad := bytes.Repeat([]byte("p"), 1<<20)
		left := h.oversized - len(prefix) - 3
		for left > 0 {
			n := min(left, len(pad))
			if _, err := w.Write(pad[:n]); err != nil {
				return
			}
			left -= n
		}
		io.WriteString(w, `"}}`)
	case strings.Contains(p, "/blobs/"):
		img, ok := h.configs[p[strings.LastIndex(p, "/")+1:]]
		if !ok {
			http.NotFound(w, r)
			return
		}
		b := img.config()
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.Write(b)
	default:
		http.NotFound(w, r)
	}
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// largeImage makes image i: a manifest of manifestBytes with a hundred
// layers, padded with an annotation, and a config with steps build steps
// of stepBytes each. All of it is decoded by a lookup, and the config's
// steps are kept to be judged.
func largeImage(i, manifestBytes, steps, stepBytes int) hostileImage {
	config := func() []byte {
		var b bytes.Buffer
		fmt.Fprintf(&b, `{"architecture":"amd64","os":"linux","created":"2026-01-02T03:04:05Z","config":{"Labels":{"image":"%d"}},"rootfs":{"type":"layers","diff_ids":[]},"history":[`, i)
		step := strings.Repeat("a", stepBytes)
		for s := range steps {
			if s > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"created":"2026-01-02T03:04:05Z","created_by":"RUN /bin/sh -c echo %d %s"}`, s, step)
		}
		b.WriteString(`]}`)
		return b.Bytes()
	}
	cfg := config()
	cfgDigest, cfgSize := digestOf(cfg), len(cfg)
	manifest := func() []byte {
		var b bytes.Buffer
		fmt.Fprintf(&b, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":%d,"digest":"%s"},"layers":[`, cfgSize, cfgDigest)
		for l := range 100 {
			if l > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":%d,"digest":"sha256:%064x"}`, l+1, l)
		}
		b.WriteString(`],"annotations":{"pad":"`)
		b.WriteString(strings.Repeat("p", manifestBytes-b.Len()-1024))
		fmt.Fprintf(&b, `","image":"%d"}}`, i)
		return b.Bytes()
	}
	return hostileImage{manifest: manifest, config: config}
}

func startHostileRegistry(t *testing.T, h *hostileRegistry, ports int) {
	for range ports {
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		h.hosts = append(h.hosts, strings.TrimPrefix(srv.URL, "http://"))
	}
}

// servedBuildguard is `buildguard serve` with a policy file and its
// default flags, as its own process.
type servedBuildguard struct {
	cmd    *exec.Cmd
	addr   string
	client *http.Client
	log    string
	done   chan struct{}
}

func startServe(t *testing.T, ctx context.Context, bin, dir string) *servedBuildguard {
	t.Helper()
	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte(`apiVersion: buildguard.dev/v1alpha1
kind: Policy
mode: enforce
failurePolicy: allow
registries:
  allow: ["127.0.0.1:*/**"]
  insecure: ["127.0.0.1:*"]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	pki, err := selfsigned.Write(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &servedBuildguard{addr: fmt.Sprintf("127.0.0.1:%d", port), log: filepath.Join(dir, "buildguard.log"), done: make(chan struct{})}
	logf, err := os.Create(s.log)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(bin, "serve", "--config", policy, "--tls-cert-file", pki.Cert, "--tls-private-key-file", pki.Key, "--listen", s.addr)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.cmd.Wait()
		logf.Close()
		close(s.done)
	}()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.done
		if t.Failed() {
			b, _ := os.ReadFile(s.log)
			t.Logf("--- buildguard log tail:\n%s", b[max(0, len(b)-3000):])
		}
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pki.CAPEM)
	s.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for {
		resp, err := s.client.Get("https://" + s.addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		select {
		case <-s.done:
			t.Fatalf("buildguard serve exited before it was ready")
		case <-ctx.Done():
			t.Fatalf("buildguard serve not ready: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// status reads a field of /proc/PID/status, in bytes.
func (s *servedBuildguard) status(field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, s.cmd.Process.Pid)
}

// watch kills the process as soon as its resident set passes limit, so
// a server without a bound does not take the machine's memory with it,
// and reports whether it did.
func (s *servedBuildguard) watch(limit int64) (stop func() (killed bool)) {
	quit := make(chan struct{})
	var killed bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if rss, err := s.status("VmRSS"); err == nil && rss > limit {
				killed = true
				s.cmd.Process.Kill()
				return
			}
			select {
			case <-quit:
				return
			case <-s.done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return func() bool {
		close(quit)
		wg.Wait()
		return killed
	}
}

// review posts an AdmissionReview of a Pod running images and returns
// the response.
func (s *servedBuildguard) review(ctx context.Context, images []string) (*admissionv1.AdmissionResponse, error) {
	pod := corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: metav1.ObjectMeta{Name: "many", Namespace: "shop"}}
	for i, img := range images {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: img})
	}
	raw, err := json.Marshal(pod)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "mem-1", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Name: "many", Namespace: "shop", Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw},
		},
	})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+s.addr+"/validate?timeout=10s", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("status %s: %w", resp.Status, err)
	}
	if out.Response == nil {
		return nil, fmt.Errorf("status %s: no response", resp.Status)
	}
	return out.Response, nil
}

// TestMemoryUnderHostileImages runs the shipped binary, `buildguard
// serve` with its default flags, as its own process, and has it judge a
// Pod of 50 images from hostile registries on ten loopback ports (so no
// per-registry bound helps): 60 MB manifests, with and without a
// Content-Length, the largest manifests and configs buildguard reads,
// and large ones it judges in full. Its peak resident set (VmHWM in
// /proc) stays under the Deployment's 512 MiB memory limit, and no case
// is admitted for want of a lookup under failurePolicy allow. Each case
// runs on a fresh process; a process that passes 512 MiB is killed.
func TestMemoryUnderHostileImages(t *testing.T) {
	dir := t.TempDir()
	bin, err := BuildBuildguard(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	const images = 50
	oversized := func(chunked bool) *hostileRegistry {
		return &hostileRegistry{oversized: 60_000_000, chunked: chunked}
	}
	large := func(manifestBytes, steps, stepBytes int) *hostileRegistry {
		h := &hostileRegistry{images: map[string]hostileImage{}, configs: map[string]hostileImage{}}
		for i := range images {
			img := largeImage(i, manifestBytes, steps, stepBytes)
			h.images[digestOf(img.manifest())] = img
			h.configs[digestOf(img.config())] = img
		}
		return h
	}
	tests := []struct {
		name string
		reg  *hostileRegistry
		// judged: every image is looked up and the Pod admitted;
		// otherwise it is denied as unresolvable-image, never admitted
		// as registry-unavailable under failurePolicy allow.
		judged bool
	}{
		{"60 MB manifests with a Content-Length", oversized(false), false},
		{"60 MB manifests, chunked", oversized(true), false},
		// The largest manifests and configs buildguard reads: 50 of them
		// hold far more than one workload may (engine.MaxImageBytes).
		{"4 MiB manifests and 8 MiB configs", large(4<<20, 2000, 4000), false},
		// Large, all judged: 50 × 500 KB of build steps fit.
		{"1 MiB manifests and 500 KB configs", large(1<<20, 500, 1000), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			startHostileRegistry(t, tt.reg, 10)
			var refs []string
			digests := make([]string, 0, images)
			for d := range tt.reg.images {
				digests = append(digests, d)
			}
			for i := range images {
				d := fmt.Sprintf("sha256:%064x", i+1)
				if len(digests) > 0 {
					d = digests[i]
				}
				refs = append(refs, fmt.Sprintf("%s/hostile/img%d@%s", tt.reg.hosts[i%len(tt.reg.hosts)], i, d))
			}
			sdir := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			if err := os.MkdirAll(sdir, 0o755); err != nil {
				t.Fatal(err)
			}
			s := startServe(t, ctx, bin, sdir)
			before, _ := s.status("VmRSS")
			stop := s.watch(memoryLimit)
			resp, err := s.review(ctx, refs)
			killed := stop()
			peak, perr := s.status("VmHWM")
			if killed {
				t.Fatalf("buildguard serve passed %d MiB resident and was killed (review: %v)", memoryLimit>>20, err)
			}
			if err != nil {
				t.Fatalf("review: %v", err)
			}
			if perr != nil {
				t.Fatal(perr)
			}
			t.Logf("peak resident set %.1f MiB (%.1f MiB before the review); allowed %v", float64(peak)/(1<<20), float64(before)/(1<<20), resp.Allowed)
			if peak >= memoryLimit {
				t.Errorf("peak resident set %d MiB, want under %d MiB", peak>>20, memoryLimit>>20)
			}
			msg := ""
			if resp.Result != nil {
				msg = resp.Result.Message
			}
			var judged map[string]string
			json.Unmarshal([]byte(resp.AuditAnnotations["digests"]), &judged)
			t.Logf("%d of %d images judged", len(judged), images)
			if !tt.judged && (resp.Allowed || !strings.Contains(msg, "[unresolvable-image]")) {
				t.Errorf("review allowed %v, message %.300q; want a denial naming unresolvable-image", resp.Allowed, msg)
			}
			if tt.judged && (!resp.Allowed || len(judged) != images || len(resp.Warnings) > 0) {
				// Admitted because every image was judged, not because a
				// lookup failed under failurePolicy allow.
				t.Errorf("review allowed %v with %d of %d images judged, warnings %.500q, message %.500q; want all judged and allowed",
					resp.Allowed, len(judged), images, resp.Warnings, msg)
			}
		})
	}
}
