package webhook

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"buildguard.dev/buildguard/decision"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/policy"
)

func TestMetricsDecided(t *testing.T) {
	m := NewMetrics()
	decided := func(v policy.Verdict) decision.Decision {
		return decision.Decision{Source: decision.Admission, Workload: engine.Workload{Namespace: "shop"}, Verdict: v}
	}
	deny := policy.Verdict{Mode: policy.ModeAudit, Outcome: policy.OutcomeDeny, Allowed: true, Images: []policy.ImageVerdict{{
		Findings: []policy.Finding{
			{Rule: "fresh-image", Action: policy.ActionDeny},
			{Rule: "unsigned", Action: policy.ActionIgnore},
		}}}}
	m.Decided(t.Context(), decided(deny))
	m.Decided(t.Context(), decided(deny))
	m.Decided(t.Context(), decided(policy.Verdict{Mode: policy.ModeEnforce, Outcome: policy.OutcomeAllow, Allowed: true}))
	got := counters(t, m, "buildguard_decisions_total")
	want := map[string]float64{
		"namespace=shop rule= verdict=allow ":                 1,
		"namespace=shop rule=fresh-image verdict=would-deny ": 2,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("buildguard_decisions_total (-want +got):\n%s", diff)
	}
}

// counters returns the values of the counter named name in m, keyed by
// their labels ("name=value " each, in Prometheus's order).
func counters(t *testing.T, m *Metrics, name string) map[string]float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, mt := range mf.GetMetric() {
			key := ""
			for _, l := range mt.GetLabel() {
				key += l.GetName() + "=" + l.GetValue() + " "
			}
			got[key] = mt.GetCounter().GetValue()
		}
	}
	return got
}

// BenchmarkMetricsReview measures what the metrics take of an allowed
// review, from concurrent reviews: its count and duration, and its
// decision.
func BenchmarkMetricsReview(b *testing.B) {
	m := NewMetrics()
	v := policy.Verdict{Mode: policy.ModeEnforce, Outcome: policy.OutcomeAllow, Allowed: true,
		Images: []policy.ImageVerdict{{Container: "app", Findings: []policy.Finding{}}, {Container: "metrics", Findings: []policy.Finding{}}}}
	d := decision.Decision{Source: decision.Admission, Workload: engine.Workload{Namespace: "shop"}, Verdict: v}
	resp := allowed("uid")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.observe(resp, &v, time.Millisecond)
			m.Decided(b.Context(), d)
		}
	})
}
