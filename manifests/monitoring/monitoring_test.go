package monitoring

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// wantAlerts are the alerts the rules must have: what a platform team
// is paged for.
var wantAlerts = []string{
	"BuildguardWebhookErrors",            // webhook error rate
	"BuildguardReviewLatencyNearTimeout", // p99 near the timeout
	"BuildguardRegistryUnavailable",      // registry unavailable
	"BuildguardNodeReportsRefused",       // reports refused
	"BuildguardDecisionJournalGrowing",   // journal growing
	"BuildguardCertificateExpiresSoon",   // certificate close to expiry
	"BuildguardNodeAgentNotReporting",    // no node agent reporting from a node
	"BuildguardAuditScanFailed",          // a periodic scan failed
}

func TestRules(t *testing.T) {
	qs, err := Rules()
	if err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, q := range qs {
		alerts = append(alerts, strings.TrimPrefix(q.Where, "alert "))
	}
	if !slices.Equal(alerts, wantAlerts) {
		t.Errorf("alerts %q, want %q", alerts, wantAlerts)
	}
	if _, err := Metrics(qs); err != nil {
		t.Error(err)
	}
	// Every alert says how bad it is and what to do.
	b, err := os.ReadFile(RulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `json:"alert"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	for _, r := range f.Groups[0].Rules {
		if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("alert %s: severity %q, summary %q, description %q; want critical, warning or info, and both annotations",
				r.Alert, r.Labels["severity"], r.Annotations["summary"], r.Annotations["description"])
		}
	}
}

// TestParseRulesRefuses: the validation refuses what promtool refuses.
func TestParseRulesRefuses(t *testing.T) {
	for name, tc := range map[string]struct{ rules, want string }{
		"bad PromQL":       {"groups:\n- name: g\n  rules:\n  - alert: A\n    expr: sum(rate(x[5m])\n", "could not parse expression"},
		"unknown field":    {"groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up == 0\n    severity: high\n", "field severity not found"},
		"bad template":     {"groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up == 0\n    annotations:\n      summary: '{{ $value | nosuchfunc }}'\n", "nosuchfunc"},
		"alert and record": {"groups:\n- name: g\n  rules:\n  - alert: A\n    record: a\n    expr: up\n", "only one of 'record' and 'alert' must be set"},
	} {
		if _, err := ParseRules(name, []byte(tc.rules)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ParseRules = %v, want an error containing %q", name, err, tc.want)
		}
	}
}

func TestDashboard(t *testing.T) {
	qs, err := Dashboard()
	if err != nil {
		t.Fatal(err)
	}
	used, err := Metrics(qs)
	if err != nil {
		t.Fatal(err)
	}
	// What the dashboard must show, by a metric of each.
	for what, metric := range map[string]string{
		"decisions by verdict":              "buildguard_reviews_total",
		"decisions by rule":                 "buildguard_decisions_total",
		"latency percentiles":               "buildguard_review_duration_seconds_bucket",
		"registry round trips and errors":   "buildguard_registry_requests_total",
		"cache hit ratio":                   "buildguard_cache_lookups_total",
		"provenance verification time":      "buildguard_provenance_verification_duration_seconds_bucket",
		"node reports accepted and refused": "buildguard_node_reports_total",
		"record journal depth":              "buildguard_decision_journal_bytes",
		"late-evidence findings":            "buildguard_retroactive_findings_total",
	} {
		if _, ok := used[metric]; !ok {
			t.Errorf("no panel shows %s (%s)", what, metric)
		}
	}
	b, err := os.ReadFile(DashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			GridPos struct{ H, W, X, Y int }
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.UID != "buildguard" {
		t.Errorf("uid %q, want buildguard: links and provisioning refer to it", d.UID)
	}
	ids := map[int]string{}
	for _, p := range d.Panels {
		if other, dup := ids[p.ID]; dup {
			t.Errorf("panels %q and %q share the id %d", other, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		if p.GridPos.X+p.GridPos.W > 24 || p.GridPos.W == 0 {
			t.Errorf("panel %q: gridPos %+v outside Grafana's 24 columns", p.Title, p.GridPos)
		}
	}
}

// TestPrometheusRule: the PrometheusRule holds the rule file's groups.
func TestPrometheusRule(t *testing.T) {
	var pr struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   any    `json:"metadata"`
		Spec       any    `json:"spec"`
	}
	b, err := os.ReadFile("prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &pr); err != nil {
		t.Fatal(err)
	}
	var rules any
	b, err = os.ReadFile(RulesFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatal(err)
	}
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != "PrometheusRule" {
		t.Errorf("%s %s, want monitoring.coreos.com/v1 PrometheusRule", pr.APIVersion, pr.Kind)
	}
	if d := cmp.Diff(rules, pr.Spec); d != "" {
		t.Errorf("prometheusrule.yaml's spec differs from %s (-rules file +PrometheusRule):\n%s", RulesFile, d)
	}
}

// TestKustomization renders manifests/monitoring as `kubectl apply -k`
// does: the dashboard in a ConfigMap Grafana's sidecar loads, and the
// PrometheusRule.
func TestKustomization(t *testing.T) {
	kubectl, err := filepath.Abs(filepath.Join("..", "..", "bin", "kubectl"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(kubectl); err != nil {
		t.Fatalf("%v: build it with `make tools`", err)
	}
	out, err := exec.Command(kubectl, "kustomize", ".").Output()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v", err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	got := map[string]*unstructured.Unstructured{}
	for {
		var o map[string]any
		if err := dec.Decode(&o); err != nil {
			break
		}
		u := &unstructured.Unstructured{Object: o}
		got[u.GetKind()+" "+u.GetNamespace()+"/"+u.GetName()] = u
	}
	cm, ok := got["ConfigMap buildguard-system/buildguard-dashboard"]
	if !ok {
		t.Fatalf("no ConfigMap buildguard-system/buildguard-dashboard in %v", keys(got))
	}
	dashboard, err := os.ReadFile(DashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if data, _, _ := unstructured.NestedString(cm.Object, "data", DashboardFile); data != string(dashboard) {
		t.Errorf("the ConfigMap's %s is not the dashboard file", DashboardFile)
	}
	if cm.GetLabels()["grafana_dashboard"] != "1" {
		t.Errorf("ConfigMap labels %v, want grafana_dashboard: \"1\" for Grafana's sidecar", cm.GetLabels())
	}
	if _, ok := got["PrometheusRule buildguard-system/buildguard"]; !ok {
		t.Errorf("no PrometheusRule buildguard-system/buildguard in %v", keys(got))
	}
}

func keys(m map[string]*unstructured.Unstructured) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestMissing(t *testing.T) {
	exposition := `# HELP a_seconds A histogram.
# TYPE a_seconds histogram
a_seconds_bucket{le="1"} 1
a_seconds_bucket{le="+Inf"} 1
a_seconds_sum 0.5
a_seconds_count 1
# HELP b_total A counter.
# TYPE b_total counter
b_total{code="200"} 3
`
	used := map[string][]string{
		"a_seconds_bucket": {"panel \"A\""}, "a_seconds_count": {"panel \"A\""}, "b_total": {"alert B"},
		"c_total": {"alert C"}, "b_total_bucket": {"panel \"B\""}, "other_thing": {"panel \"O\""},
	}
	got, err := Missing(used, "", strings.NewReader(exposition))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`b_total_bucket (used by panel "B")`, "c_total (used by alert C)", `other_thing (used by panel "O")`}
	if !slices.Equal(got, want) {
		t.Errorf("Missing = %q, want %q", got, want)
	}
	if got, _ := Missing(used, "c_", strings.NewReader(exposition)); !slices.Equal(got, want[1:2]) {
		t.Errorf("Missing with prefix c_ = %q, want %q", got, want[1:2])
	}
}
