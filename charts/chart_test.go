// Package charts holds buildguard's Helm chart (charts/buildguard). Its
// tests render the chart with the pinned helm CLI (bin/helm, make tools)
// and hold it to the kustomizations under manifests/: one source of
// truth, two installers.
package charts

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// tool is bin/NAME, built by make tools.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "bin", name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%v: build it with `make tools`", err)
	}
	return p
}

func run(t *testing.T, name string, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(tool(t, name), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// helmTemplate renders the chart as release "buildguard" in namespace ns.
func helmTemplate(t *testing.T, ns string, set ...string) ([]*unstructured.Unstructured, error) {
	t.Helper()
	args := []string{"template", "buildguard", "./buildguard", "--namespace", ns}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, err := run(t, "helm", args...)
	if err != nil {
		return nil, err
	}
	return decode(t, out), nil
}

func mustHelm(t *testing.T, ns string, set ...string) []*unstructured.Unstructured {
	t.Helper()
	objs, err := helmTemplate(t, ns, set...)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func kustomize(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	out, err := run(t, "kubectl", "kustomize", filepath.Join("..", "manifests", dir))
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, out)
}

func decode(t *testing.T, b []byte) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if err == io.EOF {
			return objs
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(m) > 0 {
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
	}
}

func key(o *unstructured.Unstructured) string {
	return fmt.Sprintf("%s %s %s/%s", o.GetAPIVersion(), o.GetKind(), o.GetNamespace(), o.GetName())
}

// byKey indexes objects by apiVersion, kind, namespace and name, failing
// on duplicates (two objects one name would mean one overwrites the
// other on apply).
func byKey(t *testing.T, objs []*unstructured.Unstructured) map[string]*unstructured.Unstructured {
	t.Helper()
	m := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		k := key(o)
		if _, dup := m[k]; dup {
			t.Errorf("%s twice", k)
		}
		m[k] = o
	}
	return m
}

// keptCRD is the one thing the chart adds to the kustomize objects: its
// CRDs outlive `helm uninstall`, as they hold every policy.
const keptCRD = "helm.sh/resource-policy"

// TestChartMatchesKustomize renders the chart with each value set that
// has a kustomize counterpart and compares the objects: the same set, and
// each object the same once decoded. The release's namespace is the only
// object the chart leaves out: Helm makes it (`--create-namespace`).
func TestChartMatchesKustomize(t *testing.T) {
	tests := []struct {
		name      string
		set       []string
		kustomize string
	}{
		{"defaults", nil, "overlays/self-managed-ca"},
		{"cert-manager", []string{"certManager.enabled=true"}, "."},
		{"postgres", []string{"store.type=postgres"}, "overlays/postgres"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := byKey(t, kustomize(t, tt.kustomize))
			h := byKey(t, mustHelm(t, "buildguard-system", tt.set...))
			for kk, o := range h {
				if o.GetKind() == "CustomResourceDefinition" {
					ann := o.GetAnnotations()
					if ann[keptCRD] != "keep" {
						t.Errorf("%s: no %s: keep", kk, keptCRD)
					}
					delete(ann, keptCRD)
					if len(ann) == 0 {
						ann = nil
					}
					o.SetAnnotations(ann)
				}
			}
			for kk, ko := range k {
				ho, ok := h[kk]
				if !ok {
					if ko.GetKind() == "Namespace" && ko.GetName() == "buildguard-system" {
						continue
					}
					t.Errorf("kustomize has %s, helm does not", kk)
					continue
				}
				// Compared as decoded: key order, quoting and flow or block
				// style do not count; list order does.
				if d := cmp.Diff(ko.Object, ho.Object); d != "" {
					t.Errorf("%s (-kustomize +helm):\n%s", kk, d)
				}
			}
			for kk := range h {
				if _, ok := k[kk]; !ok {
					t.Errorf("helm has %s, kustomize does not", kk)
				}
			}
			if len(k) < 20 {
				t.Errorf("kustomize %s rendered %d objects: too few for the comparison to mean anything", tt.kustomize, len(k))
			}
		})
	}
}

// find returns the object of kind and name.
func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s", kind, name)
	return nil
}

func has(objs []*unstructured.Unstructured, kind, name string) bool {
	return slices.ContainsFunc(objs, func(o *unstructured.Unstructured) bool { return o.GetKind() == kind && o.GetName() == name })
}

func args(t *testing.T, objs []*unstructured.Unstructured, kind, name string) []string {
	t.Helper()
	cs, _, _ := unstructured.NestedSlice(find(t, objs, kind, name).Object, "spec", "template", "spec", "containers")
	var out []string
	for _, a := range cs[0].(map[string]any)["args"].([]any) {
		out = append(out, a.(string))
	}
	return out
}

func str(o *unstructured.Unstructured, path ...string) string {
	s, _, _ := unstructured.NestedFieldNoCopy(o.Object, path...)
	return fmt.Sprint(s)
}

// TestChartValues covers the value sets without a kustomize counterpart:
// what each changes, and that everything that names the namespace
// follows the release's.
func TestChartValues(t *testing.T) {
	t.Run("another namespace", func(t *testing.T) {
		objs := mustHelm(t, "guard", "nodeAgent.namespace=guard-agent")
		a := strings.Join(args(t, objs, "Deployment", "buildguard"), " ")
		for _, want := range []string{"--tls-dns-names=buildguard.guard.svc,buildguard.guard.svc.cluster.local",
			"--ca-configmap=guard-agent/buildguard-ca", "--reporters=system:serviceaccount:guard-agent:buildguard-node-agent",
			"--audit-exclude-namespaces=kube-system,kube-public,kube-node-lease,guard,guard-agent"} {
			if !strings.Contains(a, want) {
				t.Errorf("args %s lack %s", a, want)
			}
		}
		if got := strings.Join(args(t, objs, "DaemonSet", "buildguard-node-agent"), " "); !strings.Contains(got, "--server=https://buildguard.guard.svc") {
			t.Errorf("agent args %s: want --server in namespace guard", got)
		}
		vwc := find(t, objs, "ValidatingWebhookConfiguration", "buildguard")
		hook := vwc.Object["webhooks"].([]any)[0].(map[string]any)
		if s := fmt.Sprint(hook["clientConfig"]); !strings.Contains(s, "namespace:guard") {
			t.Errorf("clientConfig %s: want the Service in guard", s)
		}
		if s := fmt.Sprint(hook["matchConditions"]); !strings.Contains(s, "system:serviceaccount:guard:buildguard") {
			t.Errorf("matchConditions %s: want buildguard's account in guard", s)
		}
		if s := fmt.Sprint(hook["namespaceSelector"]); !strings.Contains(s, "guard guard-agent") {
			t.Errorf("namespaceSelector %s: want guard and guard-agent left out", s)
		}
		for _, kind := range []string{"ClusterRoleBinding", "RoleBinding"} {
			for _, o := range objs {
				if o.GetKind() != kind {
					continue
				}
				subj, _, _ := unstructured.NestedSlice(o.Object, "subjects")
				if ns := subj[0].(map[string]any)["namespace"]; ns != "guard" {
					t.Errorf("%s %s/%s binds a service account in %v, want guard", kind, o.GetNamespace(), o.GetName(), ns)
				}
			}
		}
		np := find(t, objs, "NetworkPolicy", "buildguard-node-agent")
		if np.GetNamespace() != "guard-agent" || !strings.Contains(fmt.Sprint(np.Object["spec"]), "kubernetes.io/metadata.name:guard") {
			t.Errorf("agent NetworkPolicy in %s, spec %v: want it in guard-agent, reaching guard", np.GetNamespace(), np.Object["spec"])
		}
	})

	t.Run("sqlite", func(t *testing.T) {
		objs := mustHelm(t, "buildguard-system", "store.type=sqlite", "replicas=1")
		dep := find(t, objs, "Deployment", "buildguard")
		if r := str(dep, "spec", "replicas"); r != "1" || str(dep, "spec", "strategy", "type") != "Recreate" {
			t.Errorf("replicas %s, strategy %s: want 1, Recreate", r, str(dep, "spec", "strategy", "type"))
		}
		if a := strings.Join(args(t, objs, "Deployment", "buildguard"), " "); !strings.Contains(a, "--store-sqlite=/var/lib/buildguard/evidence.db") {
			t.Errorf("args %s: want --store-sqlite on the volume", a)
		}
		if !has(objs, "PersistentVolumeClaim", "buildguard-store") || has(objs, "PodDisruptionBudget", "buildguard") {
			t.Errorf("want a PersistentVolumeClaim and no PodDisruptionBudget")
		}
		if fs := str(dep, "spec", "template", "spec", "securityContext", "fsGroup"); fs != "65532" {
			t.Errorf("fsGroup %s: want 65532, so that the volume is writable", fs)
		}
	})

	t.Run("no node agent", func(t *testing.T) {
		objs := mustHelm(t, "buildguard-system", "nodeAgent.enabled=false", "certManager.enabled=true")
		for _, o := range objs {
			if o.GetNamespace() == "buildguard-node-agent" || (o.GetKind() == "Namespace" && o.GetName() == "buildguard-node-agent") {
				t.Errorf("%s with the node agent off", key(o))
			}
		}
		a := strings.Join(args(t, objs, "Deployment", "buildguard"), " ")
		if strings.Contains(a, "--ca-configmap") || strings.Contains(a, "--tls-ca-file") {
			t.Errorf("args %s: nothing to publish the CA to", a)
		}
	})

	t.Run("review UI, Ignore, excluded namespaces, digest", func(t *testing.T) {
		digest := "sha256:" + strings.Repeat("ab", 32)
		objs := mustHelm(t, "buildguard-system", "store.type=postgres", "reviewUI.enabled=true", "reviewUI.sessionKeySecret=review-key",
			"webhook.failurePolicy=Ignore", "webhook.excludedNamespaces={ci,sandbox}", "image.digest="+digest)
		a := strings.Join(args(t, objs, "Deployment", "buildguard"), " ")
		for _, want := range []string{"--review-listen=:8444", "--review-session-key-file=/var/run/secrets/buildguard-review/key",
			"--audit-exclude-namespaces=kube-system,kube-public,kube-node-lease,buildguard-system,buildguard-node-agent,ci,sandbox"} {
			if !strings.Contains(a, want) {
				t.Errorf("args %s lack %s", a, want)
			}
		}
		if s := fmt.Sprint(find(t, objs, "Service", "buildguard").Object["spec"]); !strings.Contains(s, "port:8444") {
			t.Errorf("Service %s: want the review port", s)
		}
		if s := fmt.Sprint(find(t, objs, "NetworkPolicy", "buildguard").Object["spec"].(map[string]any)["ingress"]); !strings.Contains(s, "port:8444") {
			t.Errorf("NetworkPolicy ingress %s: want the review port", s)
		}
		vwc := find(t, objs, "ValidatingWebhookConfiguration", "buildguard").Object["webhooks"].([]any)[0].(map[string]any)
		if vwc["failurePolicy"] != "Ignore" || !strings.Contains(fmt.Sprint(vwc["namespaceSelector"]), "ci sandbox") {
			t.Errorf("validating webhook %v: want Ignore and ci, sandbox left out", vwc)
		}
		for _, kind := range []string{"Deployment", "DaemonSet"} {
			for _, o := range objs {
				if o.GetKind() == kind {
					if img := fmt.Sprint(o.Object["spec"].(map[string]any)["template"]); !strings.Contains(img, "ghcr.io/buildguard/buildguard@"+digest) {
						t.Errorf("%s %s: want the image pinned by digest", kind, o.GetName())
					}
				}
			}
		}
	})

	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct {
			set  []string
			want string
		}{
			{[]string{"store.type=mysql"}, `store.type "mysql"`},
			{[]string{"store.type=sqlite"}, "set replicas=1"},
			{[]string{"reviewUI.enabled=true"}, "set store.type"},
			{[]string{"webhook.failurePolicy=Sometimes"}, `webhook.failurePolicy "Sometimes"`},
			{[]string{"nodeAgent.namespace=buildguard-system"}, "needs one of its own"},
			{[]string{"image.digest=latest"}, `image.digest "latest"`},
			{[]string{"replicas=0"}, "want at least 1"},
		} {
			if _, err := helmTemplate(t, "buildguard-system", tc.set...); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("helm template --set %v = %v, want an error with %q", tc.set, err, tc.want)
			}
		}
	})
}

// TestChartLint runs helm lint, strict, with each value set above.
func TestChartLint(t *testing.T) {
	for _, set := range [][]string{nil, {"certManager.enabled=true"}, {"store.type=postgres", "reviewUI.enabled=true"}, {"store.type=sqlite", "replicas=1"}} {
		args := []string{"lint", "--strict", "./buildguard", "--namespace", "buildguard-system"}
		for _, s := range set {
			args = append(args, "--set", s)
		}
		if out, err := run(t, "helm", args...); err != nil {
			t.Errorf("%v\n%s", err, out)
		}
	}
}

// TestChartMonitoring: with monitoring.dashboard and
// monitoring.prometheusRule enabled the chart renders what `kubectl
// apply -k manifests/monitoring` applies, with the labels asked for; by
// default neither (the PrometheusRule CRD may not exist).
func TestChartMonitoring(t *testing.T) {
	for _, o := range mustHelm(t, "buildguard-system") {
		if o.GetKind() == "PrometheusRule" || o.GetName() == "buildguard-dashboard" {
			t.Errorf("rendered by default: %s", key(o))
		}
	}
	k := byKey(t, kustomize(t, "monitoring"))
	h := byKey(t, mustHelm(t, "buildguard-system", "monitoring.dashboard.enabled=true", "monitoring.prometheusRule.enabled=true",
		"monitoring.prometheusRule.labels.release=kube-prometheus-stack"))
	for _, kk := range []string{"v1 ConfigMap buildguard-system/buildguard-dashboard", "monitoring.coreos.com/v1 PrometheusRule buildguard-system/buildguard"} {
		ko, ho := k[kk], h[kk]
		if ko == nil || ho == nil {
			t.Fatalf("%s: kustomize %v, helm %v", kk, ko != nil, ho != nil)
		}
		for _, field := range []string{"data", "spec"} {
			if d := cmp.Diff(ko.Object[field], ho.Object[field]); d != "" {
				t.Errorf("%s: the chart's %s differs from manifests/monitoring's (-kustomize +helm):\n%s", kk, field, d)
			}
		}
	}
	if l := h["monitoring.coreos.com/v1 PrometheusRule buildguard-system/buildguard"].GetLabels(); l["release"] != "kube-prometheus-stack" {
		t.Errorf("PrometheusRule labels %v, want release: kube-prometheus-stack", l)
	}
	if l := h["v1 ConfigMap buildguard-system/buildguard-dashboard"].GetLabels(); l["grafana_dashboard"] != "1" {
		t.Errorf("ConfigMap labels %v, want grafana_dashboard: \"1\"", l)
	}
}
