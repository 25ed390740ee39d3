package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"buildguard.dev/buildguard/audit"
	"buildguard.dev/buildguard/audit/audittest"
	"buildguard.dev/buildguard/internal/clock/clocktest"
)

var auditNow = audittest.Now()

func TestAuditUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--config is required (or --policy-source=crd)"},
		{[]string{"--policy-source=git"}, `--policy-source "git": want file or crd`},
		{[]string{"--policy-source=crd", "--config=p.yaml"}, "--config and --policy-source=crd exclude each other"},
		{[]string{"--config=p.yaml", "-o", "yaml"}, `--output "yaml": want table or json`},
		{[]string{"--config=p.yaml", "--concurrency=0"}, "--concurrency 0: want at least 1"},
		{[]string{"--config=p.yaml", "extra"}, `unexpected arguments ["extra"]`},
	} {
		var stdout, stderr bytes.Buffer
		code := run(t.Context(), append([]string{"audit"}, tc.args...), &stdout, &stderr)
		if code != exitError || !strings.Contains(stderr.String(), "buildguard: "+tc.want+"\n") || !strings.Contains(stderr.String(), "Usage:") {
			t.Errorf("audit %q = %d, stderr %q; want %d and %q with the usage", tc.args, code, stderr.String(), exitError, tc.want)
		}
	}
}

func TestAuditReportTable(t *testing.T) {
	cs, e := audittest.Cluster(t)
	s := &audit.Scanner{Client: cs, Evaluator: e, Clock: clocktest.New(auditNow)}
	r, err := s.Scan(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for i := range r.Workloads {
		if r.Workloads[i].Error != "" {
			t.Fatalf("%s not judged: %s", r.Workloads[i].Name, r.Workloads[i].Error)
		}
	}
	var b bytes.Buffer
	if err := writeAuditReport(&b, r, true); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, filepath.Join("audit", "report.txt"), b.Bytes())

	// JSON is the report as documented in docs/audit.md.
	b.Reset()
	if err := json.NewEncoder(&b).Encode(r); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		ID     string `json:"id"`
		Totals struct {
			Workloads, WouldDeny, Errors int
		} `json:"totals"`
		ByRule []struct {
			Rule      string `json:"rule"`
			WouldDeny int    `json:"wouldDeny"`
		} `json:"byRule"`
		Workloads []struct {
			Kind, Namespace, Name, Verdict string
			DenyRules                      []string `json:"denyRules"`
		} `json:"workloads"`
	}
	if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.ID != "scan-20261202T031500Z" || doc.Totals.Workloads != 4 || doc.Totals.WouldDeny != 3 || doc.Totals.Errors != 1 ||
		len(doc.ByRule) != 3 || len(doc.Workloads) != 4 {
		t.Errorf("JSON report %s", b.Bytes())
	}
}

func TestAuditProgress(t *testing.T) {
	clock := clocktest.New(auditNow)
	t.Run("plain lines", func(t *testing.T) {
		var b bytes.Buffer
		p := newProgress(&b, true, clock.Now)
		p.update(audit.Progress{Listed: 100}) // not yet
		clock.Advance(progressInterval)
		p.update(audit.Progress{Listed: 500})
		clock.Advance(time.Second)
		p.update(audit.Progress{Listed: 900}) // within the interval: not written
		p.update(audit.Progress{Listed: 1000, Total: 40})
		clock.Advance(progressInterval)
		p.update(audit.Progress{Listed: 1000, Total: 40, Done: 20, WouldDeny: 3})
		p.done(&audit.Report{Listed: 1000, Totals: audit.Counts{Workloads: 40}})
		want := "audit: listed 500 objects\n" +
			"audit: judged 0 of 40 workloads (1000 objects listed): 0 would be denied, 0 errors\n" +
			"audit: judged 20 of 40 workloads (1000 objects listed): 3 would be denied, 0 errors\n" +
			"audit: judged 40 workloads of 1000 objects listed in 21s\n"
		if b.String() != want {
			t.Errorf("progress:\n%s\nwant:\n%s", b.String(), want)
		}
	})
	t.Run("terminal", func(t *testing.T) {
		var b bytes.Buffer
		p := newProgress(&b, true, clock.Now)
		p.tty, p.width = true, 60
		p.update(audit.Progress{Listed: 10})
		p.update(audit.Progress{Listed: 10, Total: 4, Done: 1})
		p.Write([]byte("level=ERROR msg=oops\n"))
		clock.Advance(time.Second)
		p.update(audit.Progress{Listed: 10, Total: 4, Done: 4, WouldDeny: 1})
		p.done(nil)
		// Every redraw clears the line first; a log line is written on a
		// cleared line and the bar redrawn after it; done clears it.
		segs := strings.Split(b.String(), "\r\033[K")
		want := []string{"", "listing workloads: 10 objects", "[=======                      ] 1/4  would-deny 0  errors 0",
			"level=ERROR msg=oops\n", "[=======                      ] 1/4  would-deny 0  errors 0",
			"[=============================] 4/4  would-deny 1  errors 0", ""}
		if !slices.Equal(segs, want) {
			t.Errorf("terminal output %q\nwant segments %q", b.String(), want)
		}
		for _, s := range segs {
			if len(s) >= p.width {
				t.Errorf("%q does not fit %d columns", s, p.width)
			}
		}
	})
	t.Run("off", func(t *testing.T) {
		var b bytes.Buffer
		p := newProgress(&b, false, clock.Now)
		p.update(audit.Progress{Listed: 10})
		p.done(&audit.Report{})
		if b.Len() != 0 {
			t.Errorf("--no-progress wrote %q", b.String())
		}
	})
}

// apiServer answers the list and get calls of a scan from objects, as
// the API server would (one page each), and 403 for the resources in
// forbidden. It listens on loopback.
func apiServer(t *testing.T, objects map[string]any, forbidden ...string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		for _, f := range forbidden {
			if strings.HasSuffix(r.URL.Path, "/"+f) {
				w.WriteHeader(http.StatusForbidden)
				json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: "Failure",
					Reason: metav1.StatusReasonForbidden, Code: http.StatusForbidden, Message: f + ` is forbidden: User "auditor" cannot list resource "` + f + `"`})
				return
			}
		}
		if o, ok := objects[r.URL.Path]; ok {
			json.NewEncoder(w).Encode(o)
			return
		}
		lists := map[string]string{"pods": "PodList", "replicationcontrollers": "ReplicationControllerList", "deployments": "DeploymentList",
			"replicasets": "ReplicaSetList", "statefulsets": "StatefulSetList", "daemonsets": "DaemonSetList", "jobs": "JobList", "cronjobs": "CronJobList"}
		parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/") // api/v1/pods, apis/batch/v1/jobs
		if kind, ok := lists[parts[len(parts)-1]]; ok && r.URL.Query().Has("limit") {
			apiVersion := strings.Join(parts[1:len(parts)-1], "/")
			if ns := slices.Index(parts, "namespaces"); ns > 0 {
				apiVersion = strings.Join(parts[1:ns], "/")
			}
			json.NewEncoder(w).Encode(map[string]any{"kind": kind, "apiVersion": apiVersion, "metadata": map[string]any{}, "items": []any{}})
			return
		}
		w.WriteHeader(http.StatusNotFound)
		json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: "Failure",
			Reason: metav1.StatusReasonNotFound, Code: http.StatusNotFound})
	}))
	t.Cleanup(srv.Close)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: " + srv.URL + "}}]\n" +
		"users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
	if err := os.WriteFile(kubeconfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return kubeconfig
}

// TestAuditCommand runs `buildguard audit` against a loopback API server:
// its exit statuses, its outputs, and its records as `buildguard
// denials` reads them.
func TestAuditCommand(t *testing.T) {
	dir := t.TempDir()
	policyFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyFile, []byte("apiVersion: buildguard.dev/v1alpha1\nkind: Policy\nregistries:\n  allow: [\"registry.example/acme/*\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pods := map[string]any{
		"/api/v1/pods": map[string]any{"kind": "PodList", "apiVersion": "v1", "metadata": map[string]any{}, "items": []any{
			map[string]any{"metadata": map[string]any{"name": "tool", "namespace": "shop", "uid": "0b1c2d3e-0000-4000-8000-000000000001"},
				"spec": map[string]any{"containers": []any{map[string]any{"name": "tool", "image": "evil.example/tool:1"}}}},
			map[string]any{"metadata": map[string]any{"name": "agent", "namespace": "kube-system", "uid": "0b1c2d3e-0000-4000-8000-000000000002"},
				"spec": map[string]any{"containers": []any{map[string]any{"name": "agent", "image": "evil.example/agent:1"}}}},
		}},
		"/api/v1/namespaces/shop":        map[string]any{"kind": "Namespace", "apiVersion": "v1", "metadata": map[string]any{"name": "shop"}},
		"/api/v1/namespaces/kube-system": map[string]any{"kind": "Namespace", "apiVersion": "v1", "metadata": map[string]any{"name": "kube-system"}},
	}
	db := filepath.Join(dir, "evidence.db")

	var stdout, stderr bytes.Buffer
	kc := apiServer(t, pods)
	code := run(t.Context(), []string{"audit", "--kubeconfig=" + kc, "--config=" + policyFile, "--store-sqlite=" + db}, &stdout, &stderr)
	if code != exitDenied {
		t.Fatalf("audit = %d, want %d\nstdout:\n%s\nstderr:\n%s", code, exitDenied, stdout.String(), stderr.String())
	}
	for _, want := range []string{"2 objects listed, 1 workloads judged (0 judged with their owner, 0 inactive, 1 in excluded namespaces)",
		"shop/pod/tool  unapproved-registry", "unapproved-registry  1          1       1           1           0"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout does not contain %q:\n%s", want, stdout.String())
		}
	}
	// Not a terminal: plain progress lines, and the last one.
	if !strings.HasPrefix(stderr.String(), "audit: judged 0 of 1 workloads (2 objects listed): 0 would be denied, 0 errors\naudit: judged 1 workloads of 2 objects listed in ") {
		t.Errorf("stderr %q has no progress lines", stderr.String())
	}
	stdout.Reset()
	stderr.Reset()
	if code := run(t.Context(), []string{"denials", "--verdict=would-deny", "--store-sqlite=" + db, "-o", "json"}, &stdout, &stderr); code != exitOK {
		t.Fatalf("denials = %d: %s", code, stderr.String())
	}
	var d struct{ ID, Operation, User, Namespace, Kind, Name, Verdict string }
	if err := json.Unmarshal(stdout.Bytes(), &d); err != nil {
		t.Fatalf("denials output %q: %v", stdout.String(), err)
	}
	if !strings.HasPrefix(d.ID, "0b1c2d3e-0000-4000-8000-000000000001/scan-") || d.Operation != "SCAN" || d.User != "buildguard-audit" ||
		d.Namespace+"/"+d.Kind+"/"+d.Name != "shop/Pod/tool" || d.Verdict != "would-deny" {
		t.Errorf("record %+v", d)
	}

	// --exclude-namespaces "" judges kube-system too; JSON output.
	stdout.Reset()
	stderr.Reset()
	code = run(t.Context(), []string{"audit", "--kubeconfig=" + kc, "--config=" + policyFile, "--exclude-namespaces=", "-o", "json", "--no-progress"}, &stdout, &stderr)
	var r audit.Report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil || code != exitDenied {
		t.Fatalf("audit -o json = %d, %q (%v)", code, stdout.String(), err)
	}
	if r.Totals.WouldDeny != 2 || r.Excluded != 0 || stderr.Len() != 0 {
		t.Errorf("report %+v, stderr %q; want 2 would-deny, no progress", r.Totals, stderr.String())
	}

	// Nothing to deny: exit 0.
	stdout.Reset()
	code = run(t.Context(), []string{"audit", "--kubeconfig=" + kc, "--config=" + policyFile, "-n", "empty", "--no-progress"}, &stdout, &stderr)
	if code != exitOK || !strings.Contains(stdout.String(), "0 objects listed") {
		t.Errorf("audit -n empty = %d, %q; want %d", code, stdout.String(), exitOK)
	}

	// Policy reports asked for where the API server has no CRD for them:
	// the scan is reported, and its exit status says the reports were not
	// written.
	stdout.Reset()
	stderr.Reset()
	code = run(t.Context(), []string{"audit", "--kubeconfig=" + kc, "--config=" + policyFile, "--policy-reports=wgpolicyk8s", "--no-progress"}, &stdout, &stderr)
	if code != exitError || !strings.Contains(stdout.String(), "shop/pod/tool") ||
		!strings.Contains(stderr.String(), "buildguard: policy reports: policy report CRDs not served") {
		t.Errorf("audit --policy-reports=wgpolicyk8s without the CRDs = %d, stdout %q, stderr %q; want %d, the report, and why none was written",
			code, stdout.String(), stderr.String(), exitError)
	}
	stderr.Reset()
	code = run(t.Context(), []string{"audit", "--kubeconfig=" + kc, "--config=" + policyFile, "--policy-reports=kyverno"}, &stdout, &stderr)
	if code != exitError || !strings.Contains(stderr.String(), `--policy-reports: policy report API "kyverno": want openreports or wgpolicyk8s or none`) {
		t.Errorf("audit --policy-reports=kyverno = %d, stderr %q; want %d and a usage error", code, stderr.String(), exitError)
	}

	// A kind that cannot be listed fails the scan.
	stdout.Reset()
	stderr.Reset()
	code = run(t.Context(), []string{"audit", "--kubeconfig=" + apiServer(t, pods, "replicasets"), "--config=" + policyFile, "--no-progress"}, &stdout, &stderr)
	if code != exitError || !strings.Contains(stderr.String(), "buildguard: listing ReplicaSets in all namespaces: replicasets is forbidden") {
		t.Errorf("audit with replicasets forbidden = %d, stderr %q; want %d and the listing error", code, stderr.String(), exitError)
	}
}
