package audit_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"buildguard.dev/buildguard/audit"
	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/internal/testregistry"
)

// bigCluster pushes images distinct images to reg, half of them too fresh,
// and returns pods bare Pods running them round-robin, in 20 namespaces.
func bigCluster(t testing.TB, reg *testregistry.Registry, pods, images int) []runtime.Object {
	t.Helper()
	refs := make([]string, images)
	for i := range images {
		created := now.Add(-48 * time.Hour)
		if i%2 == 1 {
			created = now.Add(-time.Minute)
		}
		tag := fmt.Sprintf("acme/app%03d:1", i)
		reg.Push(t, tag, testregistry.Build(t, testregistry.Image{Created: created}))
		refs[i] = reg.Host + "/" + tag
	}
	objs := make([]runtime.Object, pods)
	for i := range pods {
		objs[i] = pod(fmt.Sprintf("team%02d", i%20), fmt.Sprintf("p%05d", i), "", corev1.PodRunning, refs[i%images])
	}
	return objs
}

// TestScanSharesCaches: a scan of 10,000 Pods running 200 distinct
// images asks the registry about each image once — the tag's digest, the
// manifest, the config — however many Pods run it.
func TestScanSharesCaches(t *testing.T) {
	const pods, images = 10000, 200
	reg := testregistry.New(t)
	cs := fake.NewClientset(bigCluster(t, reg, pods, images)...)
	reg.Reset()
	clock := clocktest.New(now)
	s := &audit.Scanner{Client: cs, Evaluator: newEngine(t, reg, clock), Clock: clock, Concurrency: 16}
	r, err := s.Scan(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := audit.Counts{Workloads: pods, Images: images, Allow: pods / 2, WouldDeny: pods / 2}
	if r.Totals != want {
		t.Errorf("totals %+v, want %+v", r.Totals, want)
	}
	byKind := map[string]int{}
	for _, req := range reg.Requests() {
		method, path, _ := strings.Cut(req, " ")
		switch {
		case path == "/v2/":
			byKind["ping"]++
		case strings.Contains(path, "/manifests/sha256:"):
			byKind[method+" manifest by digest"]++
		case strings.Contains(path, "/manifests/"):
			byKind[method+" manifest by tag"]++
		case strings.Contains(path, "/blobs/"):
			byKind[method+" blob"]++
		default:
			byKind[req]++
		}
	}
	// Per image: the tag's digest (HEAD), the manifest and the config —
	// and go-containerregistry's ping of the repository (one each here).
	// Never once per Pod: the registry client fills its caches before its
	// single flight ends, so no lookup asks twice.
	wantReqs := map[string]int{"ping": images, "HEAD manifest by tag": images, "GET manifest by digest": images, "GET blob": images}
	for k, n := range byKind {
		if w, ok := wantReqs[k]; !ok || n != w {
			t.Errorf("%d × %s, want %d", n, k, w)
		}
	}
	for k := range wantReqs {
		if _, ok := byKind[k]; !ok {
			t.Errorf("no %s requests", k)
		}
	}
	if n := reg.Count(); n != 4*images {
		t.Errorf("%d registry requests for %d pods of %d images, want %d", n, pods, images, 4*images)
	}
	t.Logf("%d pods, %d images: %d registry requests %v", pods, images, reg.Count(), byKind)
}

// BenchmarkScan measures a scan of 10,000 Pods and 200 images with a
// cold cache (registry requests/op) and the rate of judging.
func BenchmarkScan(b *testing.B) {
	const pods, images = 10000, 200
	reg := testregistry.New(b)
	cs := fake.NewClientset(bigCluster(b, reg, pods, images)...)
	clock := clocktest.New(now)
	reg.Reset()
	start := time.Now()
	for b.Loop() {
		s := &audit.Scanner{Client: cs, Evaluator: newEngine(b, reg, clock), Clock: clock}
		if _, err := s.Scan(b.Context()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(reg.Count())/float64(b.N), "registry-requests/op")
	b.ReportMetric(float64(pods*b.N)/time.Since(start).Seconds(), "pods/s")
}
