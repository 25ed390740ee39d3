package retro_test

import (
	"context"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"

	"buildguard.dev/buildguard/decision"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/internal/testregistry"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/records"
	"buildguard.dev/buildguard/registry"
	"buildguard.dev/buildguard/retro"
)

type events struct {
	mu       sync.Mutex
	got      []string
	messages []string
}

func (e *events) Event(w engine.Workload, reason, message string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, w.Namespace+"/"+w.Name+" "+reason)
	e.messages = append(e.messages, message)
}

// lateFixture is an image in an in-memory registry, created two days ago,
// a workload shop/NAME running it, and an engine judging it with the
// evidence of a SQLite store under nodeEvidence; it returns the image's
// config digest, the store, the engine and the workload.
func lateFixture(t *testing.T, name string, nodeEvidence *policy.NodeEvidence) (v1.Hash, *evidence.SQLite, *engine.Engine, engine.Workload) {
	t.Helper()
	reg := testregistry.New(t)
	img := testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-48 * time.Hour)})
	reg.Push(t, "acme/"+name+":1", img)
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	store, err := evidence.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "e.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	p, err := policy.Compile(policy.Spec{
		Registries:   policy.Registries{Allow: []string{reg.Host + "/acme/*"}, Insecure: []string{"127.0.0.1:*"}},
		NodeEvidence: nodeEvidence,
	})
	if err != nil {
		t.Fatal(err)
	}
	e := &engine.Engine{Policies: engine.PolicyFunc(func() *policy.Policy { return p }),
		Resolver: registry.New(registry.WithTransport(http.DefaultTransport)), Evidence: store}
	w := engine.Workload{Namespace: "shop", Kind: "Deployment", Name: name,
		Spec: &corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: reg.Host + "/acme/" + name + ":1"}}}}
	return cfg, store, e, w
}

// TestRetro admits a workload, then stores a report that its image was
// built on a worker, many times at once: one late finding per rule, one
// Event each, and no race (run with -race).
func TestRetro(t *testing.T) {
	cfg, store, e, w := lateFixture(t, "late", &policy.NodeEvidence{ApprovedBuildNodes: []string{"ci-*"}})
	v, err := e.Evaluate(t.Context(), w)
	if err != nil || !v.Allowed {
		t.Fatalf("admission = %+v, %v", v, err)
	}
	sink := &events{}
	reg2 := prometheus.NewRegistry()
	r := retro.New(e, sink, reg2, nil)
	var recs recorded
	r.Records = &recs
	if r.Review, err = records.ParseReviewURL("https://review.example"); err != nil {
		t.Fatal(err)
	}
	r.Clock = clocktest.New(time.Date(2026, 12, 2, 1, 2, 3, 0, time.UTC))
	r.Decided(t.Context(), admitted("uid-1", w, v))
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
	recs.waitFor(1)
	time.Sleep(200 * time.Millisecond) // let the other judgements finish
	if n := testutil.ToFloat64(r.Found().WithLabelValues("host-built", "shop")); n != 1 {
		t.Errorf("retroactive findings = %v, want 1 (host-built, once)", n)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.got) != 1 || sink.got[0] != "shop/late BuildguardLateEvidence" {
		t.Errorf("events = %q, want one BuildguardLateEvidence on shop/late", sink.got)
	}
	// The Event links the late decision's page, the record made of it.
	if len(sink.messages) != 1 || !strings.HasPrefix(sink.messages[0], "[host-built] app ") ||
		!strings.HasSuffix(sink.messages[0], " (found after admission) https://review.example/decisions/uid-1%2Flate-1796173323000000") {
		t.Errorf("event messages = %q, want the finding and the late decision's link", sink.messages)
	}
	recs.mu.Lock()
	defer recs.mu.Unlock()
	if len(recs.got) != 1 {
		t.Fatalf("decision records = %d, want 1", len(recs.got))
	}
	d := recs.got[0]
	if d.ID != "uid-1/late-1796173323000000" || d.Operation != decision.OperationLateEvidence || d.Verdict != "would-deny" ||
		d.Namespace != "shop" || d.Kind != "Deployment" || d.Name != "late" || !slices.Contains(d.Rules, "host-built") {
		t.Errorf("decision record = %+v, want uid-1/late-…, %s, would-deny, shop/Deployment/late, host-built", d, decision.OperationLateEvidence)
	}
	if err := store.AddDecision(t.Context(), d); err != nil {
		t.Errorf("the store refuses the late record: %v", err)
	}
}

// admitted is the webhook's decision to admit w, of verdict v, as the
// request uid.
func admitted(uid string, w engine.Workload, v policy.Verdict) decision.Decision {
	return decision.Decision{ID: uid, Source: decision.Admission, Operation: "CREATE", Workload: w, Verdict: v}
}

// recorded collects decision records, as a records.Recorder makes them.
type recorded struct {
	mu  sync.Mutex
	got []evidence.Decision
}

func (r *recorded) Decided(_ context.Context, d decision.Decision) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, records.FromDecision(d))
}

// waitFor waits up to 10s for n records: a finding is counted before its
// record is handed on, so the metric alone does not say the record is there.
func (r *recorded) waitFor(n int) {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		r.mu.Lock()
		got := len(r.got)
		r.mu.Unlock()
		if got >= n {
			return
		}
	}
}

// countingEvaluator counts the judgements.
type countingEvaluator struct {
	retro.Evaluator
	mu sync.Mutex
	n  int
}

func (c *countingEvaluator) Evaluate(ctx context.Context, w engine.Workload) (policy.Verdict, error) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return c.Evaluator.Evaluate(ctx, w)
}

func (c *countingEvaluator) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// TestRetroLateConnection: an image built on an approved node, with no
// connection known, is admitted; the node's sensor reports, later, a
// connection to an untrusted destination inside the build's window. It is
// judged exactly like a late build: one untrusted-egress finding, counted,
// an Event, a decision record. Connections outside every admitted image's
// build window, or of another node, judge nothing.
func TestRetroLateConnection(t *testing.T) {
	cfg, store, e, w := lateFixture(t, "lateconn", &policy.NodeEvidence{ApprovedBuildNodes: []string{"ci-*"}, TrustedDestinations: []string{"10.0.0.0/8"}})
	built := time.Now().Add(-47 * time.Hour).UTC()
	if _, _, err := store.AddReport(t.Context(), evidence.Report{Node: "ci-runner-1", Builds: []evidence.Build{{Source: "agent", EventID: "b1",
		Node: "ci-runner-1", Tool: "buildkit", ImageID: cfg.String(), Started: built, Finished: built.Add(time.Minute)}}}); err != nil {
		t.Fatal(err)
	}
	v, err := e.Evaluate(t.Context(), w)
	if err != nil || !v.Allowed || len(v.Images[0].Findings) != 0 {
		t.Fatalf("admission = %+v, %v; want allowed without findings (an approved build node)", v, err)
	}
	ev := &countingEvaluator{Evaluator: e}
	sink := &events{}
	r := retro.New(ev, sink, prometheus.NewRegistry(), nil)
	var recs recorded
	r.Records = &recs
	r.Decided(t.Context(), admitted("uid-2", w, v))

	conn := func(id, node string, at time.Time, ip string) evidence.Report {
		return evidence.Report{Node: node, Sensor: "falco", Connections: []evidence.Connection{{Source: "falco", EventID: id, Node: node,
			Time: at, Process: "wget", PID: 4242, DestIP: netip.MustParseAddr(ip), DestPort: 8080}}}
	}
	for _, rep := range []evidence.Report{
		conn("c-late-hour", "ci-runner-1", built.Add(time.Hour), "203.0.113.9"), // long after the build
		conn("c-other-node", "ci-runner-2", built.Add(20*time.Second), "203.0.113.9"),
	} {
		if _, _, err := store.AddReport(t.Context(), rep); err != nil {
			t.Fatal(err)
		}
		r.Report(t.Context(), rep)
	}
	time.Sleep(300 * time.Millisecond)
	if n := ev.count(); n != 0 {
		t.Errorf("%d judgements for connections outside every build's window, want none", n)
	}

	rep := conn("c-during", "ci-runner-1", built.Add(20*time.Second), "203.0.113.9")
	if _, _, err := store.AddReport(t.Context(), rep); err != nil {
		t.Fatal(err)
	}
	r.Report(t.Context(), rep)
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(r.Found().WithLabelValues("untrusted-egress", "shop")) < 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := testutil.ToFloat64(r.Found().WithLabelValues("untrusted-egress", "shop")); n != 1 {
		t.Fatalf("retroactive untrusted-egress findings = %v, want 1", n)
	}
	recs.waitFor(1)
	time.Sleep(100 * time.Millisecond)
	sink.mu.Lock()
	if len(sink.got) != 1 || sink.got[0] != "shop/lateconn BuildguardLateEvidence" {
		t.Errorf("events = %q, want one BuildguardLateEvidence on shop/lateconn", sink.got)
	}
	sink.mu.Unlock()
	recs.mu.Lock()
	defer recs.mu.Unlock()
	if len(recs.got) != 1 || recs.got[0].Verdict != "would-deny" || !slices.Contains(recs.got[0].Rules, "untrusted-egress") {
		t.Fatalf("decision records = %+v, want one would-deny with untrusted-egress", recs.got)
	}
}

// TestRetroBuildAfterAdmission: a build reported later but dated after
// the admission cannot be the build of what was admitted: the late
// judgement is as of the admission, and flags it (implausible-build-time)
// rather than finding host-built.
func TestRetroBuildAfterAdmission(t *testing.T) {
	cfg, store, e, w := lateFixture(t, "after", &policy.NodeEvidence{ApprovedBuildNodes: []string{"ci-*"}})
	admission := time.Now().Add(-2 * time.Hour)
	v, err := e.Evaluate(t.Context(), w)
	if err != nil || !v.Allowed {
		t.Fatalf("admission = %+v, %v", v, err)
	}
	r := retro.New(e, &events{}, prometheus.NewRegistry(), nil)
	var recs recorded
	r.Records = &recs
	w.At = admission
	r.Decided(t.Context(), admitted("uid-3", w, v))
	built := admission.Add(time.Hour) // after the admission, before now
	rep := evidence.Report{Node: "worker-3", Builds: []evidence.Build{{Source: "agent", EventID: "b-after", Node: "worker-3", Tool: "docker",
		ImageID: cfg.String(), Started: built, Finished: built.Add(time.Minute)}}}
	if _, _, err := store.AddReport(t.Context(), rep); err != nil {
		t.Fatal(err)
	}
	r.Report(t.Context(), rep)
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(r.Found().WithLabelValues("implausible-build-time", "shop")) < 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := testutil.ToFloat64(r.Found().WithLabelValues("implausible-build-time", "shop")); n != 1 {
		t.Errorf("retroactive implausible-build-time findings = %v, want 1", n)
	}
	if n := testutil.ToFloat64(r.Found().WithLabelValues("host-built", "shop")); n != 0 {
		t.Errorf("retroactive host-built findings = %v, want 0: the build is dated after the admission", n)
	}
	recs.waitFor(1)
	recs.mu.Lock()
	defer recs.mu.Unlock()
	if len(recs.got) != 1 || recs.got[0].Verdict != "warn" || !slices.Contains(recs.got[0].Rules, "implausible-build-time") {
		t.Errorf("decision records = %+v, want one warn with implausible-build-time", recs.got)
	}
}

// fixedEvaluator counts judgements and answers an allow.
type fixedEvaluator struct {
	mu sync.Mutex
	n  int
}

func (f *fixedEvaluator) Evaluate(context.Context, engine.Workload) (policy.Verdict, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	return policy.Verdict{Outcome: policy.OutcomeAllow, Allowed: true}, nil
}

func (f *fixedEvaluator) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// TestRetroRemembersAdmissionsOnly: only a workload the webhook admitted
// is judged again when its image's build is reported; a denial, a scan's
// or a late judgement's decision is not remembered.
func TestRetroRemembersAdmissionsOnly(t *testing.T) {
	w := engine.Workload{Namespace: "shop", Kind: "Deployment", Name: "web",
		Spec: &corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/shop/web:1"}}}}
	allowed := policy.Verdict{Outcome: policy.OutcomeAllow, Allowed: true, Images: []policy.ImageVerdict{{Digest: "sha256:aa"}}}
	denied := allowed
	denied.Outcome, denied.Allowed = policy.OutcomeDeny, false
	rep := evidence.Report{Node: "worker-3", Builds: []evidence.Build{{Node: "worker-3", ImageID: "sha256:aa"}}}
	for _, tc := range []struct {
		name   string
		d      decision.Decision
		judged bool
	}{
		{"admitted", decision.Decision{ID: "u", Source: decision.Admission, Workload: w, Verdict: allowed}, true},
		{"denied", decision.Decision{ID: "u", Source: decision.Admission, Workload: w, Verdict: denied}, false},
		{"scan", decision.Decision{ID: "u/scan-x", Source: decision.Scan, Workload: w, Verdict: allowed}, false},
		{"late evidence", decision.Decision{ID: "u/late-1", Source: decision.LateEvidence, Workload: w, Verdict: allowed}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := &fixedEvaluator{}
			r := retro.New(ev, nil, nil, nil)
			r.Decided(t.Context(), tc.d)
			r.Report(t.Context(), rep)
			if !tc.judged {
				// Report starts no judgement when it finds no workload.
				if n := ev.count(); n != 0 {
					t.Errorf("judged %d times after a report, want none", n)
				}
				return
			}
			deadline := time.Now().Add(10 * time.Second)
			for ev.count() == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if ev.count() == 0 {
				t.Error("not judged again after a report of its image's build")
			}
		})
	}
}
