package policyreport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"buildguard.dev/buildguard/audit"
	"buildguard.dev/buildguard/e2e"
	"buildguard.dev/buildguard/internal/clock/clocktest"
)

// readObjects reads the objects of a multi-document YAML file.
func readObjects(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []*unstructured.Unstructured
	d := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var o map[string]any
		if err := d.Decode(&o); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if o != nil {
			out = append(out, &unstructured.Unstructured{Object: o})
		}
	}
}

var (
	crdGVR  = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	nsGVR   = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	saGVR   = schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}
	rbacGVR = map[string]schema.GroupVersionResource{
		"ClusterRole":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
		"ClusterRoleBinding": {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
	}
)

// serviceAccount is the user of buildguard's service account of
// manifests/, whose RBAC the tests write with.
const serviceAccount = "system:serviceaccount:buildguard-system:buildguard"

// testCluster is a real API server with buildguard's cluster role, bound
// as manifests/base/rbac.yaml binds it, and namespaces for the scans.
type testCluster struct {
	admin dynamic.Interface
	// cfg impersonates buildguard's service account.
	cfg *rest.Config
}

func startCluster(t *testing.T) *testCluster {
	t.Helper()
	_, cfg := e2e.StartTestControlPlane(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cfg.QPS, cfg.Burst = -1, 0
	admin, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"buildguard-system", "shop", "batch", "typo", "big"} {
		o := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}
		if _, err := admin.Resource(nsGVR).Create(ctx, o, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	sa := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": "buildguard"}}}
	if _, err := admin.Resource(saGVR).Namespace("buildguard-system").Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	root, err := e2e.Root()
	if err != nil {
		t.Fatal(err)
	}
	applied := 0
	for _, o := range readObjects(t, filepath.Join(root, "manifests", "base", "rbac.yaml")) {
		gvr, ok := rbacGVR[o.GetKind()]
		if !ok || o.GetName() != "buildguard" {
			continue
		}
		if _, err := admin.Resource(gvr).Create(ctx, o, metav1.CreateOptions{}); err != nil {
			t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
		}
		applied++
	}
	if applied != 2 {
		t.Fatalf("applied %d of buildguard's ClusterRole and ClusterRoleBinding from manifests/base/rbac.yaml, want 2", applied)
	}
	sacfg := rest.CopyConfig(cfg)
	sacfg.Impersonate = rest.ImpersonationConfig{UserName: serviceAccount}
	return &testCluster{admin: admin, cfg: sacfg}
}

// applyCRDs creates the upstream CRDs of testdata/crds and waits until
// their resources are served.
func (c *testCluster) applyCRDs(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	files, err := filepath.Glob(filepath.Join("testdata", "crds", "*.yaml"))
	if err != nil || len(files) != 3 {
		t.Fatalf("CRD files %q (%v), want 3", files, err)
	}
	for _, f := range files {
		for _, o := range readObjects(t, f) {
			if _, err := c.admin.Resource(crdGVR).Create(ctx, o, metav1.CreateOptions{}); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
		}
	}
	for _, api := range []API{OpenReports, WGPolicy} {
		w := c.writer(t, api, nil)
		for {
			if ok, err := w.Served(ctx); err == nil && ok {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%s CRDs not served within a minute", api)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}

// writer writes as buildguard's service account.
func (c *testCluster) writer(t *testing.T, api API, log io.Writer) *Writer {
	t.Helper()
	dyn, err := dynamic.NewForConfig(c.cfg)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(c.cfg)
	if err != nil {
		t.Fatal(err)
	}
	w := &Writer{Client: dyn, Discovery: disc, API: api, Clock: clocktest.New(time.Date(2026, 12, 2, 3, 0, 5, 0, time.UTC))}
	if log != nil {
		w.Log = slog.New(slog.NewJSONHandler(log, nil))
	}
	return w
}

// stored is the report of namespace ns (the cluster-scoped one for "")
// as the API server keeps it, or nil.
func (c *testCluster) stored(t *testing.T, api API, ns string) *unstructured.Unstructured {
	t.Helper()
	nsRes, clRes := api.Resources()
	ri := c.admin.Resource(clRes).Namespace("")
	if ns != "" {
		ri = c.admin.Resource(nsRes).Namespace(ns)
	}
	o, err := ri.Get(t.Context(), Name, metav1.GetOptions{})
	if err != nil {
		if strings.Contains(err.Error(), "not found") {
			return nil
		}
		t.Fatal(err)
	}
	return o
}

// secondScan is the next scan of scan's namespaces: the Deployment's web
// container was rebuilt long ago and only its debug container is still
// fresh, the StatefulSet with the exception and the CronJob are gone,
// and namespace typo's label was fixed.
func secondScan() *audit.Report {
	r := scan()
	r.ID = "scan-20261202T090000Z"
	web := r.Workloads[0]
	web.Findings = web.Findings[1:2]
	ok := r.Workloads[2]
	j := r.Workloads[4]
	j.Findings = nil
	r.Workloads = []audit.Result{web, ok, j}
	return r
}

// TestWriterAPIServer writes reports of both APIs, as buildguard's
// service account, to a real API server with the upstream CRDs: the
// server keeps every field written (none pruned, every value valid), and
// a later scan updates, replaces and deletes what it should.
func TestWriterAPIServer(t *testing.T) {
	c := startCluster(t)

	t.Run("without the CRDs nothing is written, said once", func(t *testing.T) {
		var log bytes.Buffer
		w := c.writer(t, OpenReports, &log)
		for range 3 {
			if _, err := w.Write(t.Context(), scan()); !errors.Is(err, ErrNotServed) {
				t.Fatalf("Write = %v, want ErrNotServed", err)
			}
		}
		w.Written(t.Context(), scan())
		if n := strings.Count(log.String(), "does not serve openreports.io/v1alpha1 reports and clusterreports"); n != 1 ||
			strings.Contains(log.String(), "policy reports not written") {
			t.Errorf("said %d times that the CRDs are not served, want once and no error:\n%s", n, log.String())
		}
	})

	c.applyCRDs(t)

	t.Run("a writer without RBAC logs why it wrote nothing", func(t *testing.T) {
		var log bytes.Buffer
		w := c.writer(t, OpenReports, &log)
		cfg := rest.CopyConfig(c.cfg)
		cfg.Impersonate.UserName = "system:serviceaccount:buildguard-system:nobody"
		dyn, err := dynamic.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		w.Client = dyn
		w.Written(t.Context(), scan())
		if !strings.Contains(log.String(), `"msg":"policy reports not written","scan":"scan-20261202T030000Z","api":"openreports","error":"listing reports: reports.openreports.io is forbidden`) {
			t.Errorf("log does not say the reports were forbidden:\n%s", log.String())
		}
	})
	for _, api := range []API{OpenReports, WGPolicy} {
		t.Run(string(api), func(t *testing.T) {
			var log bytes.Buffer
			w := c.writer(t, api, &log)
			r := scan()
			st, err := w.Write(t.Context(), r)
			if err != nil {
				t.Fatalf("Write: %v", err)
			}
			if want := (Stats{Created: 4, Results: 5}); st != want {
				t.Errorf("Write = %+v, want %+v", st, want)
			}
			if n := strings.Count(log.String(), "the API server serves"); n != 1 {
				t.Errorf("said %d times that the CRDs are served, want once:\n%s", n, log.String())
			}
			// What the API server keeps is what was written: a field
			// outside the schema would be pruned, a value outside an enum
			// refused.
			want := build(r, DefaultMaxResults)
			for _, ns := range []string{"", "batch", "shop", "typo"} {
				got := c.stored(t, api, ns)
				if got == nil {
					t.Fatalf("no report for namespace %q", ns)
				}
				sent := want[ns].object(api, r.ID, w.Clock.Now(), DefaultMaxResults)
				for _, field := range []string{"results", "summary", "source", "configuration"} {
					if d := cmp.Diff(sent.Object[field], got.Object[field]); d != "" {
						t.Errorf("report %q: %s as stored differs from what was written (-written +stored):\n%s", ns, field, d)
					}
				}
				if got.GetLabels()[ManagedByLabel] != Source || got.GetAnnotations()[ScanAnnotation] != r.ID {
					t.Errorf("report %q: labels %v, annotations %v", ns, got.GetLabels(), got.GetAnnotations())
				}
			}

			// The next scan: results of what passes or is gone are removed,
			// reports of namespaces with nothing left deleted.
			shop := c.stored(t, api, "shop")
			st, err = w.Write(t.Context(), secondScan())
			if err != nil {
				t.Fatalf("second Write: %v", err)
			}
			if want := (Stats{Updated: 2, Deleted: 2, Results: 1}); st != want {
				t.Errorf("second Write = %+v, want %+v", st, want)
			}
			if c.stored(t, api, "batch") != nil || c.stored(t, api, "") != nil {
				t.Errorf("the reports of batch (no workloads left) and the cluster (no namespace finding left) remain")
			}
			shop2 := c.stored(t, api, "shop")
			results, _, _ := unstructured.NestedSlice(shop2.Object, "results")
			if len(results) != 1 || results[0].(map[string]any)["rule"] != "fresh-image" ||
				results[0].(map[string]any)["properties"].(map[string]any)["containers"] != "debug" {
				t.Errorf("shop's results after the second scan: %v, want fresh-image on container debug alone", results)
			}
			if s, _, _ := unstructured.NestedMap(shop2.Object, "summary"); s["fail"] != int64(1) || s["pass"] != int64(1) || s["skip"] != int64(0) {
				t.Errorf("shop's summary after the second scan: %v, want 1 fail (web), 1 pass (ok)", s)
			}
			if shop2.GetUID() != shop.GetUID() || shop2.GetAnnotations()[ScanAnnotation] != "scan-20261202T090000Z" {
				t.Errorf("shop's report was not updated in place: uid %s → %s, scan %s", shop.GetUID(), shop2.GetUID(), shop2.GetAnnotations()[ScanAnnotation])
			}

			// A scan of one namespace leaves the others' reports alone.
			st, err = w.Write(t.Context(), &audit.Report{ID: "scan-typo", Namespaces: []string{"typo"}})
			if err != nil {
				t.Fatal(err)
			}
			if want := (Stats{Deleted: 1}); st != want {
				t.Errorf("Write of an empty scan of typo = %+v, want %+v", st, want)
			}
			if c.stored(t, api, "typo") != nil {
				t.Errorf("typo's report remains after a scan found no workloads there")
			}
			if got := c.stored(t, api, "shop"); got == nil || got.GetResourceVersion() != shop2.GetResourceVersion() {
				t.Errorf("a scan of typo alone changed shop's report")
			}

			// A namespace with more results than a report holds.
			big := &audit.Report{ID: "scan-big", Namespaces: []string{"big"}}
			for i := range 2500 {
				big.Workloads = append(big.Workloads, audit.Result{Kind: "Pod", Namespace: "big", Name: fmt.Sprintf("p%04d", i), UID: fmt.Sprintf("u%04d", i), Verdict: "would-deny", Mode: "enforce",
					Findings: []audit.Finding{{Rule: "fresh-image", Severity: "high", Action: "deny", Denies: true, Container: "c", ContainerKind: "container",
						Image: "r.example/x:1", Digest: "sha256:" + strings.Repeat("a", 64), Message: "image was created 8s before admission"}}})
			}
			if st, err = w.Write(t.Context(), big); err != nil {
				t.Fatalf("Write of 2,500 results: %v", err)
			}
			got := c.stored(t, api, "big")
			results, _, _ = unstructured.NestedSlice(got.Object, "results")
			if len(results) != DefaultMaxResults || got.GetAnnotations()[OmittedAnnotation] != "1500" || st.Omitted != 1500 {
				t.Errorf("big's report: %d results, annotation %q, %d omitted; want %d, 1500", len(results), got.GetAnnotations()[OmittedAnnotation], st.Omitted, DefaultMaxResults)
			}
			if s, _, _ := unstructured.NestedMap(got.Object, "summary"); s["fail"] != int64(2500) {
				t.Errorf("big's summary %v, want 2500 fail: it counts the results left out", s)
			}
		})
	}
}
