package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// docBlock returns the shell lines of the first code block after the
// heading of docs/install.md: what a user copies.
func docBlock(t *testing.T, root, heading string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "docs", "install.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(b), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("docs/install.md: no heading %q", heading)
	}
	m := regexp.MustCompile("(?s)```(?:sh)?\n(.*?)```").FindStringSubmatch(after)
	if m == nil {
		t.Fatalf("docs/install.md: no code block under %q", heading)
	}
	return m[1]
}

// runDoc runs shell lines as a user would, with bin/ first on PATH and
// the control plane as the current cluster, from the repository root.
func (e *env) runDoc(root, script string) (string, error) {
	cmd := exec.CommandContext(e.ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "KUBECONFIG="+e.cp.Kubeconfig, "PATH="+filepath.Join(root, Bin)+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestInstallAsDocumented installs buildguard with the PostgreSQL store as
// docs/install.md says, on a control plane with Pod Security admission,
// and uninstalls it as it says:
//   - the API server's Pod Security admission takes buildguard's pods in
//     its restricted namespace and the node agent's pod in the agent's
//     namespace (and would refuse the agent in buildguard's, where it
//     once was);
//   - the uninstall commands exit 0 and leave no webhook configuration,
//     namespace or CRD behind.
//
// There is no node: pods are created, not run (the real-node tests run
// them).
func TestInstallAsDocumented(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	e := startEnv(t, ctx, t.TempDir())
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}

	install := docBlock(t, root, "## Node evidence and decision records")
	var lines []string
	for _, l := range strings.Split(install, "\n") {
		if !strings.Contains(l, "rollout status") { // no node: nothing rolls out
			lines = append(lines, l)
		}
	}
	if out, err := e.runDoc(root, strings.Join(lines, "\n")); err != nil {
		t.Fatalf("install as documented: %v\n%s\n%s", err, install, out)
	}

	// The ReplicaSet controller creates buildguard's pods: Pod Security
	// restricted takes them.
	e.eventually(60*time.Second, "buildguard's pods created in buildguard-system", func() error {
		out, err := e.kubectl("", "get", "pods", "-n", "buildguard-system", "-l", "app.kubernetes.io/component=webhook", "-o", "name")
		if err != nil || strings.Count(out, "pod/") != 2 {
			ev, _ := e.kubectl("", "get", "events", "-n", "buildguard-system")
			return fmt.Errorf("pods %q (%v); events:\n%s", out, err, ev)
		}
		return nil
	})

	// The DaemonSet controller makes no pod without a node: make the
	// agent's pod from its template, as the controller would.
	dsJSON := e.mustKubectl("", "get", "daemonset", "buildguard-node-agent", "-n", "buildguard-node-agent", "-o", "json")
	var ds struct {
		Spec struct {
			Template struct {
				Metadata map[string]any `json:"metadata"`
				Spec     map[string]any `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	if err := json.Unmarshal([]byte(dsJSON), &ds); err != nil {
		t.Fatal(err)
	}
	// sa is a service account of ns: the ServiceAccount admission plugin
	// refuses a pod naming one that does not exist before Pod Security
	// looks at it.
	agentPod := func(ns, sa string) string {
		meta, spec := ds.Spec.Template.Metadata, ds.Spec.Template.Spec
		meta["name"], meta["namespace"], spec["serviceAccountName"] = "agent-probe", ns, sa
		b, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if out, err := e.kubectl(agentPod("buildguard-node-agent", "buildguard-node-agent"), "create", "--dry-run=server", "-f", "-"); err != nil {
		t.Errorf("the node agent's pod in buildguard-node-agent: %v\n%s", err, out)
	}
	out, err := e.kubectl(agentPod("buildguard-system", "buildguard"), "create", "--dry-run=server", "-f", "-")
	if err == nil || !strings.Contains(out, "violates PodSecurity") {
		t.Errorf("the node agent's pod in buildguard-system (restricted) was not refused by Pod Security: %v\n%s", err, out)
	}

	// The chart's value sets that have no kustomization (charts/ compares
	// those that have one): the API server takes their objects.
	for _, set := range [][]string{
		{"store.type=sqlite", "replicas=1", "reviewUI.enabled=true", "reviewUI.sessionKeySecret=review-key"},
		{"nodeAgent.enabled=false", "certManager.enabled=false", "webhook.failurePolicy=Ignore", "webhook.excludedNamespaces={ci}"},
	} {
		args := []string{"template", "buildguard", filepath.Join(root, "charts", "buildguard"), "--namespace", "buildguard-system"}
		for _, v := range set {
			args = append(args, "--set", v)
		}
		rendered, err := exec.CommandContext(ctx, filepath.Join(root, Bin, "helm"), args...).Output()
		if err != nil {
			t.Fatalf("helm %v: %v", args, err)
		}
		if out, err := e.kubectl(string(rendered), "apply", "--dry-run=server", "-f", "-"); err != nil {
			t.Errorf("the chart with %v, dry-run: %v\n%s", set, err, out)
		}
	}

	// Uninstall, with the overlay applied above.
	uninstall := docBlock(t, root, "## Uninstall")
	if !strings.Contains(uninstall, "-k manifests/ ") {
		t.Fatalf("the uninstall block no longer deletes -k manifests/:\n%s", uninstall)
	}
	uninstall = strings.ReplaceAll(uninstall, "-k manifests/ ", "-k manifests/overlays/postgres ")
	if out, err := e.runDoc(root, uninstall); err != nil {
		t.Fatalf("uninstall as documented: %v\n%s\n%s", err, uninstall, out)
	}
	for _, kind := range []string{"validatingwebhookconfiguration", "mutatingwebhookconfiguration", "crd"} {
		if out := e.mustKubectl("", "get", kind, "-o", "name"); strings.Contains(out, "buildguard") {
			t.Errorf("left after uninstall: %s", out)
		}
	}
	e.eventually(2*time.Minute, "namespaces deleted", func() error {
		out, err := e.kubectl("", "get", "namespaces", "-o", "name")
		if err != nil || strings.Contains(out, "buildguard") {
			return fmt.Errorf("namespaces %q (%v)", out, err)
		}
		return nil
	})
}
