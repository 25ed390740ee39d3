// Package manifests holds buildguard's kustomizations; its tests render
// each install path with kubectl kustomize (bin/kubectl, make tools) and
// check what a cluster would refuse or what would fail only on a real
// node: the node agent's namespace, sockets and credentials, and the
// store overlay's args and network policy.
package manifests

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
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"buildguard.dev/buildguard/records"
)

// The identity and audience buildguard serve accepts node reports from by
// default (cmd/buildguard: --reporters, --report-audience).
const (
	defaultReporter = "system:serviceaccount:buildguard-node-agent:buildguard-node-agent"
	reportAudience  = "buildguard"
)

// Render runs kubectl kustomize on dir (relative to manifests/) and
// decodes the objects.
func Render(t testing.TB, dir string) []*unstructured.Unstructured {
	t.Helper()
	kubectl, err := filepath.Abs(filepath.Join("..", "bin", "kubectl"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(kubectl); err != nil {
		t.Fatalf("%v: build it with `make tools`", err)
	}
	out, err := exec.Command(kubectl, "kustomize", dir).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr)
	}
	objs, err := Decode(out)
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v", dir, err)
	}
	return objs
}

// Decode reads a multi-document YAML stream of objects.
func Decode(b []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if err == io.EOF {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

// find returns the namespace of the object of kind and name, and decodes
// it into out.
func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string, out any) (namespace string) {
	t.Helper()
	o := findU(t, objs, kind, name)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, out); err != nil {
		t.Fatalf("%s %s: %v", kind, name, err)
	}
	return o.GetNamespace()
}

func findU(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s", kind, name)
	return nil
}

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s", name)
	return corev1.Container{}
}

// flag returns the value of --name= in args.
func flag(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// installPaths are the kustomizations users apply, and what tells them
// apart in the Deployment's args.
var installPaths = []struct {
	dir      string
	tlsFlags []string // flags the path's TLS needs
	store    bool     // PostgreSQL
}{
	{".", []string{"tls-cert-file", "tls-private-key-file", "tls-ca-file"}, false},
	{"overlays/self-managed-ca", []string{"self-managed-ca-secret", "tls-dns-names", "webhook-configuration"}, false},
	{"overlays/postgres", []string{"self-managed-ca-secret", "tls-dns-names", "webhook-configuration"}, true},
}

// TestNodeAgentInstall checks the node agent of every install path: a
// namespace of its own whose Pod Security level admits it (buildguard's
// is restricted, which refuses hostPID, host paths and capabilities), no
// host path of type Socket (which keeps the pod in ContainerCreating on a
// node without that socket), its CA published by buildguard into its
// namespace, a token for the audience and identity buildguard accepts,
// and network policies that let it reach buildguard.
func TestNodeAgentInstall(t *testing.T) {
	for _, p := range installPaths {
		t.Run(p.dir, func(t *testing.T) {
			objs := Render(t, p.dir)
			var ds appsv1.DaemonSet
			agentNS := find(t, objs, "DaemonSet", "buildguard-node-agent", &ds)
			var dep appsv1.Deployment
			bgNS := find(t, objs, "Deployment", "buildguard", &dep)
			if agentNS == bgNS {
				t.Fatalf("the agent is in buildguard's namespace %s", bgNS)
			}
			var ns, bns corev1.Namespace
			find(t, objs, "Namespace", agentNS, &ns)
			find(t, objs, "Namespace", bgNS, &bns)
			if got := ns.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
				t.Errorf("namespace %s enforces Pod Security %q, want privileged (hostPID, host paths, capabilities)", agentNS, got)
			}
			if got := bns.Labels["pod-security.kubernetes.io/enforce"]; got != "restricted" {
				t.Errorf("namespace %s enforces Pod Security %q, want restricted", bgNS, got)
			}

			spec := ds.Spec.Template.Spec
			agent := container(t, spec, "node-agent")
			mounts := map[string]string{} // mount path → host path
			for _, v := range spec.Volumes {
				if v.HostPath == nil {
					continue
				}
				if v.HostPath.Type != nil && *v.HostPath.Type == corev1.HostPathSocket {
					t.Errorf("volume %s: host path %s of type Socket: a node without it keeps the pod in ContainerCreating", v.Name, v.HostPath.Path)
				}
				for _, m := range agent.VolumeMounts {
					if m.Name == v.Name {
						mounts[m.MountPath] = v.HostPath.Path
					}
				}
			}
			for _, f := range []string{"docker-host", "containerd-address"} {
				v, _ := flag(agent.Args, f)
				sock, ok := strings.CutPrefix(v, "unix://")
				if !ok {
					t.Errorf("--%s=%q, want a unix socket", f, v)
					continue
				}
				found := false
				for mp := range mounts {
					found = found || strings.HasPrefix(sock, mp+"/")
				}
				if !found {
					t.Errorf("--%s=%s is in no host directory mounted (%v)", f, sock, mounts)
				}
			}

			// Credentials: the token's audience and identity, the CA.
			var audience, caConfigMap, caFile string
			caFile, _ = flag(agent.Args, "ca-file")
			tokenFile, _ := flag(agent.Args, "token-file")
			for _, v := range spec.Volumes {
				if v.Projected == nil {
					continue
				}
				dir := ""
				for _, m := range agent.VolumeMounts {
					if m.Name == v.Name {
						dir = m.MountPath
					}
				}
				for _, s := range v.Projected.Sources {
					if s.ServiceAccountToken != nil && filepath.Join(dir, s.ServiceAccountToken.Path) == tokenFile {
						audience = s.ServiceAccountToken.Audience
					}
					if s.ConfigMap != nil {
						for _, it := range s.ConfigMap.Items {
							if filepath.Join(dir, it.Path) == caFile && it.Key == "ca.crt" {
								caConfigMap = s.ConfigMap.Name
							}
						}
					}
					if s.Secret != nil {
						t.Errorf("the agent mounts Secret %s: a Secret of buildguard's namespace cannot be mounted in %s", s.Secret.Name, agentNS)
					}
				}
			}
			if audience != reportAudience {
				t.Errorf("token audience %q, want %q", audience, reportAudience)
			}
			if id := "system:serviceaccount:" + agentNS + ":" + spec.ServiceAccountName; id != defaultReporter {
				t.Errorf("agent identity %s, want buildguard serve's default --reporters %s", id, defaultReporter)
			}
			if caConfigMap == "" {
				t.Fatalf("--ca-file=%s comes from no ConfigMap key ca.crt", caFile)
			}
			var cm corev1.ConfigMap
			find(t, objs, "ConfigMap", caConfigMap, &cm)
			if len(cm.Data) != 0 {
				t.Errorf("ConfigMap %s has data %v: kubectl apply would overwrite what buildguard publishes", caConfigMap, cm.Data)
			}
			bg := container(t, dep.Spec.Template.Spec, "buildguard")
			if v, _ := flag(bg.Args, "ca-configmap"); v != agentNS+"/"+caConfigMap {
				t.Errorf("buildguard --ca-configmap=%q, want %s/%s", v, agentNS, caConfigMap)
			}
			var role rbacv1.Role
			find(t, objs, "Role", "buildguard-ca-publisher", &role)
			var rb rbacv1.RoleBinding
			rbNS := find(t, objs, "RoleBinding", "buildguard-ca-publisher", &rb)
			if rbNS != agentNS || len(rb.Subjects) != 1 || rb.Subjects[0].Name != dep.Spec.Template.Spec.ServiceAccountName || rb.Subjects[0].Namespace != bgNS {
				t.Errorf("RoleBinding %s/buildguard-ca-publisher = %+v, want buildguard's service account", rbNS, rb.Subjects)
			}
			if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].ResourceNames, []string{caConfigMap}) || !slices.Contains(role.Rules[0].Verbs, "patch") {
				t.Errorf("Role buildguard-ca-publisher rules %+v, want patch on ConfigMap %s alone", role.Rules, caConfigMap)
			}

			// The agent's egress reaches buildguard's pods in their namespace.
			var np networkingv1.NetworkPolicy
			find(t, objs, "NetworkPolicy", "buildguard-node-agent", &np)
			reaches := false
			for _, e := range np.Spec.Egress {
				for _, to := range e.To {
					if to.NamespaceSelector != nil && to.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] == bgNS &&
						to.PodSelector != nil && to.PodSelector.MatchLabels["app.kubernetes.io/component"] == "webhook" {
						reaches = reaches || slices.ContainsFunc(e.Ports, func(p networkingv1.NetworkPolicyPort) bool { return p.Port.IntValue() == 8443 })
					}
				}
			}
			if !reaches {
				t.Errorf("NetworkPolicy buildguard-node-agent: no egress to buildguard's pods in %s on 8443", bgNS)
			}

			// Neither webhook judges the agent's pods: it must start while
			// buildguard is down.
			for _, kind := range []string{"ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"} {
				u := findU(t, objs, kind, "buildguard")
				hooks, _, _ := unstructured.NestedSlice(u.Object, "webhooks")
				for _, h := range hooks {
					exprs, _, _ := unstructured.NestedSlice(h.(map[string]any), "namespaceSelector", "matchExpressions")
					if !strings.Contains(fmt.Sprint(exprs), agentNS) || !strings.Contains(fmt.Sprint(exprs), bgNS) {
						t.Errorf("%s: namespaceSelector %v does not leave out %s and %s", kind, exprs, bgNS, agentNS)
					}
				}
			}
		})
	}
}

// TestStoreOverlay checks that the PostgreSQL store goes on top of an
// install path without replacing its TLS flags (docs/install.md's patch
// once did, and the pods crash-looped), takes the DSN from a Secret
// through the environment, and may reach the database.
func TestStoreOverlay(t *testing.T) {
	for _, p := range installPaths {
		t.Run(p.dir, func(t *testing.T) {
			objs := Render(t, p.dir)
			var dep appsv1.Deployment
			find(t, objs, "Deployment", "buildguard", &dep)
			bg := container(t, dep.Spec.Template.Spec, "buildguard")
			for _, f := range append([]string{"policy-source", "listen", "timeout", "log-format"}, p.tlsFlags...) {
				if _, ok := flag(bg.Args, f); !ok {
					t.Errorf("args %q lack --%s", bg.Args, f)
				}
			}
			var dsn *corev1.EnvVar
			for i, e := range bg.Env {
				if e.Name == "BUILDGUARD_STORE_POSTGRES_DSN" {
					dsn = &bg.Env[i]
				}
			}
			var np networkingv1.NetworkPolicy
			find(t, objs, "NetworkPolicy", "buildguard", &np)
			toDB := slices.ContainsFunc(np.Spec.Egress, func(e networkingv1.NetworkPolicyEgressRule) bool {
				return slices.ContainsFunc(e.Ports, func(p networkingv1.NetworkPolicyPort) bool { return p.Port.IntValue() == 5432 })
			})
			if !p.store {
				if dsn != nil || toDB {
					t.Errorf("no store asked for, but a DSN (%v) or egress to 5432 (%v)", dsn != nil, toDB)
				}
				return
			}
			if dsn == nil || dsn.ValueFrom == nil || dsn.ValueFrom.SecretKeyRef == nil ||
				dsn.ValueFrom.SecretKeyRef.Name != "buildguard-store" || dsn.ValueFrom.SecretKeyRef.Key != "dsn" {
				t.Errorf("env %+v: want BUILDGUARD_STORE_POSTGRES_DSN from Secret buildguard-store, key dsn", bg.Env)
			}
			for _, a := range bg.Args {
				if strings.Contains(a, "postgres") {
					t.Errorf("arg %q: the DSN belongs in the environment, not the arguments", a)
				}
			}
			if v, _ := flag(bg.Args, "decision-journal"); !strings.HasPrefix(v, "/tmp/") {
				t.Errorf("--decision-journal=%q, want a file on the /tmp volume", v)
			}
			if !toDB {
				t.Errorf("NetworkPolicy buildguard: no egress to PostgreSQL's port 5432")
			}
		})
	}
}

// shutdownTimeout is server.DefaultShutdownTimeout: how long buildguard
// waits for the requests in flight once the drain is over.
const shutdownTimeout = 10 * time.Second

// TestDrainFitsGracePeriod: every install path drains (serve
// --drain-delay) for longer than the endpoints take to update, and the
// drain and the shutdown after it end before the kubelet kills the
// process (terminationGracePeriodSeconds).
func TestDrainFitsGracePeriod(t *testing.T) {
	for _, p := range installPaths {
		t.Run(p.dir, func(t *testing.T) {
			objs := Render(t, p.dir)
			var dep appsv1.Deployment
			find(t, objs, "Deployment", "buildguard", &dep)
			v, ok := flag(container(t, dep.Spec.Template.Spec, "buildguard").Args, "drain-delay")
			drain, err := time.ParseDuration(v)
			if !ok || err != nil || drain < 2*time.Second {
				t.Fatalf("--drain-delay=%q (%v): want at least 2s, the time endpoints take to update", v, err)
			}
			grace := dep.Spec.Template.Spec.TerminationGracePeriodSeconds
			if grace == nil || time.Duration(*grace)*time.Second < drain+shutdownTimeout+5*time.Second {
				t.Errorf("terminationGracePeriodSeconds %v: want at least --drain-delay %s + %s in flight + 5s for the records", grace, drain, shutdownTimeout)
			}
		})
	}
}

// TestTmpHoldsTheJournal: the /tmp emptyDir, where the PostgreSQL install
// keeps its decision journal, holds a full journal and the .replay file
// being moved to the store (records.DefaultMaxJournalBytes each), with room
// to spare. A smaller sizeLimit gets the pod evicted while the store is down,
// which is exactly when the journal grows.
func TestTmpHoldsTheJournal(t *testing.T) {
	want := resource.NewQuantity(2*records.DefaultMaxJournalBytes+32<<20, resource.BinarySI)
	for _, p := range installPaths {
		t.Run(p.dir, func(t *testing.T) {
			objs := Render(t, p.dir)
			var dep appsv1.Deployment
			find(t, objs, "Deployment", "buildguard", &dep)
			i := slices.IndexFunc(dep.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == "tmp" })
			if i < 0 || dep.Spec.Template.Spec.Volumes[i].EmptyDir == nil {
				t.Fatalf("Deployment buildguard: no emptyDir volume tmp")
			}
			got := dep.Spec.Template.Spec.Volumes[i].EmptyDir.SizeLimit
			if got == nil || got.Cmp(*want) < 0 {
				t.Errorf("volume tmp sizeLimit %v: want at least %s (a full journal, the file being replayed and 32Mi)", got, want)
			}
		})
	}
}
