package policyreport

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"buildguard.dev/buildguard/audit"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/")

// scan is what an audit scan of three namespaces found: a Deployment
// denied for two containers' fresh images, one admitted by an exception,
// a warning, a workload not judged, a passing one, and a namespace with
// an invalid mode label.
func scan() *audit.Report {
	return &audit.Report{ID: "scan-20261202T030000Z", Workloads: []audit.Result{
		{Kind: "Deployment", Namespace: "shop", Name: "web", UID: "u-web", Verdict: "would-deny", Mode: "enforce", Findings: []audit.Finding{
			{Rule: "fresh-image", Severity: "high", Action: "deny", Denies: true, Container: "web", ContainerKind: "container", Image: "r.example/web:1", Digest: "sha256:aa", Message: "image was created 8s before admission"},
			{Rule: "fresh-image", Severity: "critical", Action: "deny", Denies: true, Container: "debug", ContainerKind: "container", Image: "r.example/debug:1", Digest: "sha256:bb", Message: "image was created 2s before admission"},
			{Rule: "runtime-socket-mount", Severity: "high", Action: "warn", Container: "web", ContainerKind: "container", Image: "r.example/web:1", Message: "mounts /var/run/docker.sock"},
		}},
		{Kind: "StatefulSet", Namespace: "shop", Name: "hotfix", UID: "u-hotfix", Verdict: "allow", Mode: "enforce", Findings: []audit.Finding{
			{Rule: "fresh-image", Severity: "high", Action: "deny", Container: "hotfix", ContainerKind: "container", Image: "r.example/hotfix:1", Message: "image was created 9s before admission", Exception: "shop/hotfix"},
		}},
		{Kind: "Pod", Namespace: "shop", Name: "ok", UID: "u-ok", Verdict: "allow", Mode: "enforce"},
		{Kind: "CronJob", Namespace: "batch", Name: "report", UID: "u-report", Error: "labels of namespace batch: forbidden"},
		{Kind: "Job", Namespace: "typo", Name: "j", UID: "u-j", Verdict: "allow", Mode: "enforce", Findings: []audit.Finding{
			{Rule: "invalid-mode-label", Severity: "medium", Action: "warn", Message: `namespace typo has buildguard.dev/mode="audti", which is not enforce, warn or audit; enforcing`, Policy: "default"},
		}},
	}}
}

func TestBuildGolden(t *testing.T) {
	at := time.Date(2026, 12, 2, 3, 0, 5, 0, time.UTC)
	for _, api := range []API{OpenReports, WGPolicy} {
		reps := build(scan(), DefaultMaxResults)
		var out []byte
		for _, ns := range []string{"", "batch", "shop", "typo"} {
			rep, ok := reps[ns]
			if !ok {
				t.Fatalf("%s: no report for namespace %q", api, ns)
			}
			b, err := yaml.Marshal(rep.object(api, "scan-20261202T030000Z", at, DefaultMaxResults).Object)
			if err != nil {
				t.Fatal(err)
			}
			out = append(append(out, "---\n"...), b...)
		}
		if len(reps) != 4 {
			t.Errorf("%s: %d reports, want 4", api, len(reps))
		}
		golden := filepath.Join("testdata", string(api)+".golden.yaml")
		if *update {
			if err := os.WriteFile(golden, out, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatal(err)
		}
		if string(want) != string(out) {
			t.Errorf("%s reports differ from %s (go test -update to rewrite):\n%s", api, golden, out)
		}
	}
}

func TestBuildBounded(t *testing.T) {
	r := &audit.Report{ID: "s"}
	for i := range 2500 {
		f := audit.Finding{Rule: "fresh-image", Severity: "high", Action: "deny", Denies: i%2 == 0, Container: "c", ContainerKind: "container", Image: "r.example/x:1", Message: "fresh"}
		r.Workloads = append(r.Workloads, audit.Result{Kind: "Pod", Namespace: "big", Name: fmt.Sprintf("p%04d", i), Verdict: "allow", Findings: []audit.Finding{f}})
	}
	rep := build(r, 1000)["big"]
	if len(rep.results) != 1000 || rep.omitted != 1500 {
		t.Fatalf("%d results, %d omitted; want 1000 and 1500", len(rep.results), rep.omitted)
	}
	if rep.summary.fail != 1250 || rep.summary.warn != 1250 {
		t.Errorf("summary %+v, want 1250 fail and 1250 warn: it counts what was omitted too", rep.summary)
	}
	for i, res := range rep.results {
		if res.status != "fail" {
			t.Fatalf("result %d is %s: the most serious come first, and there are 1250 failures", i, res.status)
		}
	}
	o := rep.object(OpenReports, "s", time.Unix(0, 0), 1000)
	if o.GetAnnotations()[OmittedAnnotation] != "1500" {
		t.Errorf("annotations %v, want %s: 1500", o.GetAnnotations(), OmittedAnnotation)
	}
}
