package e2e

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"buildguard.dev/buildguard/audit"
	"buildguard.dev/buildguard/internal/testregistry"
	"buildguard.dev/buildguard/manifests/monitoring"
)

// auditNamespace holds the workloads created before buildguard's webhook
// was registered.
const auditNamespace = "legacy"

// createPreexisting creates, while no webhook judges anything yet, what
// an audit scan must find: a Deployment running an image built seconds
// ago (fresh-image), a bare Pod from a registry the policy does not allow
// (unapproved-registry), and a Deployment that is fine. It waits for the
// controllers to create their ReplicaSets and Pods, which the scan must
// not count again.
func (e *env) createPreexisting() {
	e.t.Helper()
	img, err := testregistry.MakeImage(testregistry.Image{Created: time.Now(), Steps: []string{"COPY app /app # buildkit"}})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.reg.Push("e2e/legacy-fresh:1", img); err != nil {
		e.t.Fatal(err)
	}
	e.mustKubectl("", "create", "namespace", auditNamespace)
	e.eventually(30*time.Second, "default service account in "+auditNamespace, func() error {
		_, err := e.kubectl("", "get", "serviceaccount", "default", "-n", auditNamespace)
		return err
	})
	e.mustKubectl("", "create", "deployment", "stale", "-n", auditNamespace, "--image="+e.reg.Host+"/e2e/legacy-fresh:1", "--replicas=2")
	e.mustKubectl("", "create", "deployment", "fine", "-n", auditNamespace, "--image="+e.imgs["clean:1"])
	// Never contacted: the policy does not allow its registry.
	e.mustKubectl(podYAML(auditNamespace, "unapproved", "registry.invalid/tools/debug:1"), "apply", "-f", "-")
	e.eventually(60*time.Second, "the Deployments' pods", func() error {
		out, err := e.kubectl("", "get", "pods", "-n", auditNamespace, "-o", "name")
		if err != nil {
			return err
		}
		if n := len(strings.Fields(out)); n != 4 {
			return fmt.Errorf("%d pods: %q", n, out)
		}
		return nil
	})
}

// testAudit runs `buildguard audit` as an administrator would, against
// the control plane, and finds the workloads created before the webhook
// judged by their top-level object, once each, and recorded.
func (e *env) testAudit(t *testing.T) {
	db := filepath.Join(t.TempDir(), "audit.db")
	run := func(args ...string) (stdout, stderr string, code int) {
		t.Helper()
		cmd := exec.CommandContext(e.ctx, e.bg.bin, args...)
		cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+e.reg.CAFile)
		var o, s bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &s
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			code = ee.ExitCode()
		case err != nil:
			t.Fatalf("buildguard %q: %v", args, err)
		}
		return o.String(), s.String(), code
	}
	out, stderr, code := run("audit", "--kubeconfig="+e.cp.Kubeconfig, "--policy-source=crd", "--store-sqlite="+db,
		"--namespace="+auditNamespace, "--no-progress")
	if code != 1 {
		t.Fatalf("buildguard audit exited %d, want 1 (would deny)\nstdout:\n%s\nstderr:\n%s", code, out, stderr)
	}
	t.Logf("buildguard audit:\n%s", out)
	lines := strings.Split(out, "\n")
	row := func(first string) []string {
		for _, l := range lines {
			if f := strings.Fields(l); len(f) > 0 && f[0] == first {
				return f
			}
		}
		return nil
	}
	// The namespace's row: 3 workloads (2 Deployments, 1 Pod), 3 images,
	// 2 would be denied, no warnings or errors.
	if got, want := row(auditNamespace), []string{auditNamespace, "3", "3", "2", "0", "0"}; !slices.Equal(got, want) {
		t.Errorf("namespace row %q, want %q", got, want)
	}
	for _, rule := range []string{"fresh-image", "unapproved-registry"} {
		if got, want := row(rule), []string{rule, "1", "1", "1", "1", "0"}; !slices.Equal(got, want) {
			t.Errorf("rule row %q, want %q", got, want)
		}
	}
	for _, want := range []string{"legacy/deployment/stale  fresh-image", "legacy/pod/unapproved    unapproved-registry"} {
		if !strings.Contains(out, want) {
			t.Errorf("audit output does not list %q", want)
		}
	}
	for _, never := range []string{"replicaset/", "pod/stale-", "pod/fine-", "deployment/fine"} {
		if strings.Contains(out, never) {
			t.Errorf("audit output lists %q, judged with its Deployment or allowed", never)
		}
	}

	// The records, as a platform team finds them.
	out, stderr, code = run("denials", "--verdict", "would-deny", "--store-sqlite="+db, "-o", "json")
	if code != 0 {
		t.Fatalf("buildguard denials exited %d: %s", code, stderr)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var d struct {
			ID, Operation, Namespace, Kind, Name, User, Verdict string
			Rules                                               []string
		}
		if err := json.Unmarshal([]byte(l), &d); err != nil {
			t.Fatalf("denials line %q: %v", l, err)
		}
		if d.Operation != "SCAN" || d.User != "buildguard-audit" || !strings.Contains(d.ID, "/scan-") || d.Verdict != "would-deny" {
			t.Errorf("record %+v, want a SCAN by buildguard-audit with a scan ID", d)
		}
		got = append(got, d.Namespace+"/"+d.Kind+"/"+d.Name+" "+strings.Join(d.Rules, ","))
	}
	slices.Sort(got)
	if want := []string{"legacy/Deployment/stale fresh-image", "legacy/Pod/unapproved unapproved-registry"}; !slices.Equal(got, want) {
		t.Errorf("would-deny records %q, want %q", got, want)
	}
	out, _, _ = run("denials", "--verdict", "would-deny", "--store-sqlite="+db)
	if !strings.Contains(out, "legacy/deployment/stale") {
		t.Errorf("denials table does not list the scanned Deployment:\n%s", out)
	}
}

// testAuditClaim races replicas for the same periodic scans on the real
// API server, whose optimistic concurrency decides: each scan is claimed
// by exactly one of them.
func (e *env) testAuditClaim(t *testing.T) {
	cfg, err := clientcmd.BuildConfigFromFlags("", e.cp.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 200, 200 // four replicas' worth of requests from one client
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const replicas, scans = 4, 5
	for i := range scans {
		id := fmt.Sprintf("scan-e2e-%d", i)
		var wg sync.WaitGroup
		var won atomic.Int32
		errs := make(chan error, replicas)
		for r := range replicas {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ok, err := audit.Claim(e.ctx, client, "buildguard-system", "e2e-audit-claim", id, fmt.Sprintf("replica-%d", r), time.Now())
				if err != nil {
					errs <- err
				}
				if ok {
					won.Add(1)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("%s: %v", id, err)
		}
		if n := won.Load(); n != 1 {
			t.Errorf("%s claimed by %d of %d replicas, want exactly 1", id, n, replicas)
		}
	}
}

// testPolicyReports reads the Report the server's periodic scan (every
// minute) wrote in the namespace of the workloads that ran before
// buildguard: the Pod from a registry the policy does not allow fails.
func (e *env) testPolicyReports(t *testing.T) {
	e.eventually(150*time.Second, "buildguard's Report in "+auditNamespace, func() error {
		out, err := e.kubectl("", "get", "reports.openreports.io", "buildguard", "-n", auditNamespace, "-o", "json")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		var r struct {
			Metadata struct {
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
			Source  string `json:"source"`
			Summary struct{ Pass, Fail int }
			Results []struct {
				Rule, Result, Source string
				Resources            []struct{ Kind, Name string }
			} `json:"results"`
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			return err
		}
		found := false
		for _, res := range r.Results {
			if res.Rule == "unapproved-registry" && res.Result == "fail" && res.Source == "buildguard" &&
				len(res.Resources) == 1 && res.Resources[0].Kind == "Pod" && res.Resources[0].Name == "unapproved" {
				found = true
			}
		}
		if !found || r.Source != "buildguard" || r.Summary.Fail < 1 || r.Summary.Pass < 1 ||
			r.Metadata.Labels["app.kubernetes.io/managed-by"] != "buildguard" || !strings.HasPrefix(r.Metadata.Annotations["buildguard.dev/scan"], "scan-") {
			return fmt.Errorf("report %s: want a failed unapproved-registry result on Pod unapproved, a pass (Deployment fine), buildguard's label and scan", out)
		}
		return nil
	})
}

// testMonitoringMetrics reads the server's /metrics after it has judged,
// recorded, looked registries up, taken node reports, found late
// evidence and scanned: every server metric that manifests/monitoring's
// dashboard and alert rules query is there. (The node agent's are
// checked against a running agent in cmd/buildguard.)
func (e *env) testMonitoringMetrics(t *testing.T) {
	used, err := monitoring.Used()
	if err != nil {
		t.Fatal(err)
	}
	server := map[string][]string{}
	for name, where := range used {
		if !strings.HasPrefix(name, "buildguard_node_agent_") {
			server[name] = where
		}
	}
	// The audit metrics describe the last complete scan: wait for one.
	var body []byte
	e.eventually(90*time.Second, "a complete periodic scan in /metrics", func() error {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		resp, err := c.Get("https://" + e.bg.Addr + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if body, err = io.ReadAll(resp.Body); err != nil {
			return err
		}
		if !strings.Contains(string(body), "buildguard_audit_workloads{") {
			return fmt.Errorf("no complete scan yet")
		}
		return nil
	})
	missing, err := monitoring.Missing(server, "buildguard_", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range missing {
		t.Errorf("buildguard's /metrics has no %s", m)
	}
	if len(server) < 15 {
		t.Errorf("the dashboard and rules query %d server metrics, fewer than they should", len(server))
	}
}
