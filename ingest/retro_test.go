package ingest_test

import (
	"context"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/ingest"
	"buildguard.dev/buildguard/internal/testregistry"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
)

type events struct {
	mu  sync.Mutex
	got []string
}

func (e *events) Event(w engine.Workload, reason, message string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, w.Namespace+"/"+w.Name+" "+reason)
}

// TestRetro admits a workload, then stores a report that its image was
// built on a worker, many times at once: one late finding per rule, one
// Event each, and no race (run with -race).
func TestRetro(t *testing.T) {
	reg := testregistry.New(t)
	img := testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-48 * time.Hour)})
	reg.Push(t, "acme/late:1", img)
	cfg, _ := img.ConfigName()
	store, err := evidence.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "e.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	p, err := policy.Compile(policy.Spec{
		Registries:   policy.Registries{Allow: []string{reg.Host + "/acme/*"}, Insecure: []string{"127.0.0.1:*"}},
		NodeEvidence: &policy.NodeEvidence{ApprovedBuildNodes: []string{"ci-*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	e := &engine.Engine{Policies: engine.PolicyFunc(func() *policy.Policy { return p }),
		Resolver: registry.New(registry.WithTransport(http.DefaultTransport)), Evidence: store, Now: time.Now}
	w := engine.Workload{Namespace: "shop", Kind: "Deployment", Name: "late",
		Spec: &corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: reg.Host + "/acme/late:1"}}}}
	v, err := e.Evaluate(t.Context(), w)
	if err != nil || !v.Allowed {
		t.Fatalf("admission = %+v, %v", v, err)
	}
	sink := &events{}
	reg2 := prometheus.NewRegistry()
	r := ingest.NewRetro(e, sink, reg2, nil)
	var recs recorded
	r.Record = recs.add
	r.Now = func() time.Time { return time.Date(2026, 12, 2, 1, 2, 3, 0, time.UTC) }
	r.Admitted("uid-1", w, v)
	rep := evidence.Report{Node: "worker-3", Builds: []evidence.Build{{Source: "agent", EventID: "b1", Node: "worker-3", Tool: "docker",
		ImageID: cfg.String(), Started: time.Now().Add(-47 * time.Hour), Finished: time.Now().Add(-47 * time.Hour)}}}
	if _, _, err := store.AddReport(t.Context(), rep); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() { defer wg.Done(); r.Report(context.Background(), rep) }()
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(r.Found().WithLabelValues("host-built", "shop")) < 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let the other judgements finish
	if n := testutil.ToFloat64(r.Found().WithLabelValues("host-built", "shop")); n != 1 {
		t.Errorf("retroactive findings = %v, want 1 (host-built, once)", n)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.got) != 1 || sink.got[0] != "shop/late BuildguardLateEvidence" {
		t.Errorf("events = %q, want one BuildguardLateEvidence on shop/late", sink.got)
	}
	recs.mu.Lock()
	defer recs.mu.Unlock()
	if len(recs.got) != 1 {
		t.Fatalf("decision records = %d, want 1", len(recs.got))
	}
	d := recs.got[0]
	if d.ID != "uid-1/late-1796173323000000" || d.Operation != ingest.LateOperation || d.Verdict != "would-deny" ||
		d.Namespace != "shop" || d.Kind != "Deployment" || d.Name != "late" || !slices.Contains(d.Rules, "host-built") {
		t.Errorf("decision record = %+v, want uid-1/late-…, %s, would-deny, shop/Deployment/late, host-built", d, ingest.LateOperation)
	}
	if err := store.AddDecision(t.Context(), d); err != nil {
		t.Errorf("the store refuses the late record: %v", err)
	}
}

// recorded collects decision records.
type recorded struct {
	mu  sync.Mutex
	got []evidence.Decision
}

func (r *recorded) add(d evidence.Decision) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, d)
}
