package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// nodeEnv is the real node of a test, with the helpers of env.
type nodeEnv struct {
	*env
	n *Node
}

// startNode starts the real node for t. When t ends the node is torn down
// and whatever the tear-down left on the host fails t.
func startNode(t *testing.T, ctx context.Context) *nodeEnv {
	t.Helper()
	n, err := StartNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := n.state
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range n.Processes() {
				t.Logf("--- %s log tail:\n%s", p.Name, p.Tail(3000))
			}
			if dir, err := n.SaveLogs(); err != nil {
				t.Logf("saving the node's logs: %v", err)
			} else {
				t.Logf("the node's logs and its pods' are kept in %s", dir)
			}
		}
		t0 := time.Now()
		if err := n.Stop(); err != nil {
			t.Error(err)
		}
		t.Logf("node torn down in %s: %s", time.Since(t0).Round(100*time.Millisecond), n.StopSteps)
		checkHostClean(t, before)
	})
	t.Logf("node %s Ready, with DNS, in %s", NodeName, n.Started.Round(100*time.Millisecond))
	return &nodeEnv{env: &env{t: t, ctx: ctx, cp: n.ControlPlane, imgs: map[string]string{}}, n: n}
}

// on returns e for subtest t: its helpers fail t, not the test of e.
func (e *nodeEnv) on(t *testing.T) *nodeEnv {
	env := *e.env
	env.t = t
	return &nodeEnv{env: &env, n: e.n}
}

// checkHostClean fails t if anything of the node is left on the host.
func checkHostClean(t *testing.T, before *hostState) {
	t.Helper()
	if _, err := os.Stat(NodeDir); err == nil {
		t.Errorf("%s is left", NodeDir)
	}
	if exec.Command("ip", "link", "show", NodeBridge).Run() == nil {
		t.Errorf("bridge %s is left", NodeBridge)
	}
	if ms := append(mountsUnder(NodeDir), mountsUnder(nodeCacheDockerRoot())...); len(ms) > 0 {
		t.Errorf("mounts left: %v", ms)
	}
	if pids := processesOfNode(before); len(pids) > 0 {
		t.Errorf("processes left: %v", pids)
	}
	if d := nodeCgroupDirs(); len(d) > 0 {
		t.Errorf("cgroups left: %v", d)
	}
	if c := changedSysctls(before.Sysctls); len(c) > 0 {
		t.Errorf("sysctls changed: %v", c)
	}
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		now, err := exec.Command(cmd).Output()
		if err != nil {
			t.Error(err)
			continue
		}
		if left := ruleCleanup(before.Rules[cmd], string(now)); left != "" {
			t.Errorf("%s: rules left:\n%s", cmd, left)
		}
	}
	if left := newTables(before.Tables); len(left) > 0 {
		t.Errorf("nftables tables left: %v", left)
	}
	for _, p := range hostPaths() {
		if _, err := os.Lstat(p); err == nil && !before.Existed[p] && p != "/run/containerd" && p != "/run/containerd/s" {
			t.Errorf("%s is left", p)
		}
	}
}

// smokeYAML is two web servers behind a Service and a client that asks
// the Service forty times by its address and resolves its name with
// CoreDNS.
const smokeYAML = `apiVersion: v1
kind: Namespace
metadata: {name: smoke}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: smoke}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: httpd
        image: %[1]s
        command: [sh, -c, 'mkdir -p /tmp/www && echo "hello from $(hostname)" > /tmp/www/index.html && echo serving && exec httpd -f -p 8080 -h /tmp/www']
        ports: [{containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: smoke}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
`

const smokeClientYAML = `apiVersion: v1
kind: Pod
metadata: {name: client, namespace: smoke}
spec:
  restartPolicy: Never
  containers:
  - name: client
    image: %[1]s
    command: [sh, -c, 'nslookup web.smoke.svc.cluster.local %[2]s; for i in $(seq 40); do printf "GET / HTTP/1.0\r\n\r\n" | nc -w 5 $WEB_SERVICE_HOST 80 | tail -n 1; done']
`

// TestRealNode runs a single-node cluster on this machine, with pods that
// really run, and buildguard installed on it as users install it.
func TestRealNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Minute)
	defer cancel()
	e := startNode(t, ctx)

	t.Run("pods run and reach each other through a Service", func(t *testing.T) {
		e := e.on(t)
		busybox := NodeRegistry + "/base/busybox:1"
		e.mustKubectl(fmt.Sprintf(smokeYAML, busybox), "apply", "-f", "-")
		e.mustKubectl("", "-n", "smoke", "rollout", "status", "deployment/web", "--timeout=120s")
		pods := strings.Fields(e.mustKubectl("", "-n", "smoke", "get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"))
		if len(pods) != 2 {
			t.Fatalf("web pods: %v", pods)
		}
		for _, p := range pods {
			if out := e.mustKubectl("", "-n", "smoke", "logs", p); strings.TrimSpace(out) != "serving" {
				t.Errorf("kubectl logs %s = %q, want serving", p, out)
			}
			if out := e.mustKubectl("", "-n", "smoke", "exec", p, "--", "cat", "/tmp/www/index.html"); strings.TrimSpace(out) != "hello from "+p {
				t.Errorf("kubectl exec %s: %q", p, out)
			}
		}
		e.mustKubectl(fmt.Sprintf(smokeClientYAML, busybox, DNSServiceIP), "apply", "-f", "-")
		e.eventually(90*time.Second, "the client pod completes", func() error {
			out, err := e.kubectl("", "-n", "smoke", "get", "pod", "client", "-o", "jsonpath={.status.phase}")
			if err != nil || out != "Succeeded" {
				return fmt.Errorf("phase %q %v", out, err)
			}
			return nil
		})
		logs := e.mustKubectl("", "-n", "smoke", "logs", "client")
		svcIP := e.mustKubectl("", "-n", "smoke", "get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
		if !strings.Contains(logs, "Address: "+svcIP) && !strings.Contains(logs, "Address 1: "+svcIP) {
			t.Errorf("CoreDNS did not resolve web.smoke.svc.cluster.local to %s:\n%s", svcIP, logs)
		}
		for _, p := range pods {
			if !strings.Contains(logs, "hello from "+p) {
				t.Errorf("the Service never reached endpoint %s:\n%s", p, logs)
			}
		}
		e.mustKubectl("", "delete", "namespace", "smoke", "--wait=false")
	})

	t.Run("no packet of the node leaves the machine", func(t *testing.T) {
		mangle, err := exec.Command("iptables", "-t", "mangle", "-S").Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			"-A POSTROUTING -d " + ServiceCIDR, "-A POSTROUTING -d " + PodCIDR + " -j BGNODE-GUARD",
			"-A POSTROUTING -s " + PodCIDR + " -j BGNODE-GUARD", "-A BGNODE-GUARD -o " + NodeBridge + " -j RETURN",
			"-A BGNODE-GUARD -o lo -j RETURN", "-j DROP",
		} {
			if !strings.Contains(string(mangle), want) {
				t.Errorf("iptables -t mangle -S has no %q:\n%s", want, mangle)
			}
		}
		nat, err := exec.Command("iptables", "-t", "nat", "-S").Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range strings.Split(string(nat), "\n") {
			if strings.Contains(r, "MASQUERADE") && strings.Contains(r, PodCIDR) {
				t.Errorf("pod traffic is masqueraded: %s", r)
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	if err := e.n.StartDocker(ctx); err != nil {
		t.Fatal(err)
	}
	var img *ImageBuild
	t.Run("the image builds from the Dockerfile with BuildKit", func(t *testing.T) {
		var err error
		if img, err = e.n.BuildImage(ctx, "e2e-1"); err != nil {
			t.Fatal(err)
		}
		t.Logf("built and pushed %s in %s: %s to pull, %s unpacked", img.Ref, img.Took.Round(time.Second), mib(img.Size), mib(img.Unpacked))
		if img.Config.User != "65532:65532" || !slices.Equal(img.Config.Entrypoint, []string{"/buildguard"}) {
			t.Errorf("image config: user %q, entrypoint %q; want 65532:65532, /buildguard", img.Config.User, img.Config.Entrypoint)
		}
	})
	if img == nil {
		if !t.Failed() {
			return // -run chose the first subtests only
		}
		t.FailNow()
	}
	testInstalled(t, e, img)
}

// TestNodeTeardownAfterCrash kills a process that runs a node, with a pod
// running on it, as a crash or a test timeout would: the processes it
// started die with it, but the containers, their shims and mounts, the
// bridge, the rules and the sysctls stay. The next node's start
// (TeardownNode) must remove all of it.
func TestNodeTeardownAfterCrash(t *testing.T) {
	const child = "BUILDGUARD_E2E_CRASH_CHILD"
	if os.Getenv(child) == "1" {
		crashChild()
		return
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestNodeTeardownAfterCrash$", "-test.v")
	cmd.Env = append(os.Environ(), child+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if sc.Text() == "NODE READY" {
				ready <- true
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			cmd.Wait()
			t.Fatalf("the node did not start:\n%s", log.String())
		}
	case <-time.After(5 * time.Minute):
		cmd.Process.Kill()
		t.Fatalf("the node did not start within 5m:\n%s", log.String())
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	st, err := loadHostState()
	if err != nil {
		t.Fatalf("no record of the crashed node's host: %v", err)
	}
	// What a crash leaves: else this test would not test the tear-down.
	if exec.Command("ip", "link", "show", NodeBridge).Run() != nil || len(cgroupProcs()) == 0 || len(mountsUnder(NodeDir)) == 0 {
		t.Fatalf("the crash left no bridge, containers or mounts: bridge %v, %d container processes, mounts %v",
			exec.Command("ip", "link", "show", NodeBridge).Run() == nil, len(cgroupProcs()), mountsUnder(NodeDir))
	}
	boots, _ := filepath.Glob(filepath.Join(NodeDir, "run", "containerd", "io.containerd.runtime.v2.task", "*", "*", "bootstrap.json"))
	var sockets []string
	for _, f := range boots {
		var b struct{ Address string }
		if data, err := os.ReadFile(f); err == nil && json.Unmarshal(data, &b) == nil {
			sockets = append(sockets, strings.TrimPrefix(b.Address, "unix://"))
		}
	}
	if len(sockets) == 0 {
		t.Errorf("no shim socket named in %d bootstrap.json files", len(boots))
	}
	t.Logf("the crash left %d container processes, %d mounts, %d shim sockets, the bridge and the rules", len(cgroupProcs()), len(mountsUnder(NodeDir)), len(sockets))
	t0 := time.Now()
	if err := TeardownNode(); err != nil {
		t.Fatal(err)
	}
	t.Logf("torn down in %s", time.Since(t0).Round(100*time.Millisecond))
	checkHostClean(t, st)
	for _, s := range sockets {
		if _, err := os.Lstat(s); err == nil {
			t.Errorf("shim socket %s is left", s)
		}
	}
}

// crashChild starts a node with a pod on it, says so, and waits to be
// killed.
func crashChild() {
	ctx := context.Background()
	n, err := StartNode(ctx)
	if err != nil {
		fmt.Println("start:", err)
		os.Exit(1)
	}
	pod := fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata: {name: sleeper, namespace: default}\nspec:\n  containers:\n  - {name: s, image: %s, command: [sleep, '3600']}\n", NodeRegistry+"/base/busybox:1")
	if out, err := n.Kubectl(ctx, strings.NewReader(pod), "apply", "-f", "-"); err != nil {
		fmt.Println(out, err)
		os.Exit(1)
	}
	if out, err := n.Kubectl(ctx, nil, "wait", "--for=condition=Ready", "pod/sleeper", "--timeout=120s"); err != nil {
		fmt.Println(out, err)
		os.Exit(1)
	}
	fmt.Println("NODE READY")
	select {}
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
