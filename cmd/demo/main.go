// Command demo plays buildguard's main job end to end on a real
// single-node Kubernetes cluster on this machine (kubelet, containerd,
// runc, the CNI bridge, kube-proxy, CoreDNS; e2e.StartNode): it builds
// buildguard's image from the Dockerfile with BuildKit, installs it as
// docs/install.md says (self-managed CA, a PostgreSQL store, the node
// agent), and plays MITRE ATT&CK analytic AN1261 with kubectl: a pipeline
// image is admitted and its pods run; a pod that mounts the node's Docker
// socket builds an image whose build downloads from an unknown IP, and
// that image is denied. Then it stays up until Ctrl-C and tears everything
// down. It needs root, and nothing on the host may hold the node's
// bridge, addresses or runtime sockets.
//
//	make demo   (go run ./cmd/demo -buildguard bin/buildguard)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"buildguard.dev/buildguard/e2e"
)

func main() {
	bin := flag.String("buildguard", "bin/buildguard", "path of the buildguard binary (kubectl buildguard)")
	exit := flag.Bool("exit", false, "stop after the story instead of staying up until Ctrl-C")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *exit); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin string, exit bool) (err error) {
	start := time.Now()
	bin, err = filepath.Abs(bin)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "buildguard-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	section("Starting a single-node Kubernetes cluster on this machine")
	fmt.Println("  etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, containerd + runc,")
	fmt.Println("  the CNI bridge " + e2e.NodeBridge + " (" + e2e.PodCIDR + "), kube-proxy, CoreDNS; images from a registry at " + e2e.NodeRegistry)
	n, err := e2e.StartNode(ctx)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("\nTearing the node down.")
		if terr := n.Stop(); terr != nil && err == nil {
			err = terr
		}
	}()
	fmt.Printf("  node %s Ready in %s\n", e2e.NodeName, n.Started.Round(100*time.Millisecond))
	if err := n.StartDocker(ctx); err != nil {
		return err
	}
	sh := &shell{n: n, ctx: ctx}

	section("Building buildguard's image from the Dockerfile with BuildKit")
	fmt.Println("  DOCKER_BUILDKIT=1 docker build --network host --build-arg GO_IMAGE=" + e2e.GoImage + " --build-arg BASE_IMAGE=" + e2e.BaseImage + " .")
	img, err := n.BuildImage(ctx, "demo")
	if err != nil {
		return err
	}
	fmt.Printf("  %s\n  built and pushed in %s, %.1f MiB to pull\n", img.Ref, img.Took.Round(time.Second), float64(img.Size)/(1<<20))

	section("Installing buildguard as docs/install.md says: self-managed CA, PostgreSQL store, node agent")
	pgDir := filepath.Join(dir, "postgres")
	if err := os.Mkdir(pgDir, 0o700); err != nil {
		return err
	}
	store, err := n.StartStore(ctx, pgDir)
	if err != nil {
		return err
	}
	defer store.Stop()
	fmt.Println("  PostgreSQL runs on this machine, outside the cluster: Service postgres.db with an EndpointSlice to " + e2e.NodeIP + ":5432")
	kdir := filepath.Join(dir, "install")
	if err := os.Mkdir(kdir, 0o755); err != nil {
		return err
	}
	if err := n.Install(ctx, sh.kubectl, img, store.PodDSN, kdir); err != nil {
		return err
	}
	sh.kubectl("", "get", "pods", "-A", "-o", "wide")
	if err := n.ApplyPolicy(ctx, sh.kubectl, e2e.NodePolicy); err != nil {
		return err
	}
	if err := n.CreateNamespaces(ctx, sh.quiet, "shop", "builds"); err != nil {
		return err
	}
	sh.kubectl("", "label", "namespace", "builds", "buildguard.dev/mode=audit")
	fmt.Printf("  ready in %s: namespaces shop (enforce) and builds (audit)\n", time.Since(start).Round(time.Second))

	now := time.Now()
	shopImg, err := e2e.ImageWithCmd(now.Add(-72*time.Hour), []string{"/bin/sh", "-c", "echo shop 1.4 serving; exec httpd -f -p 8080 -h /tmp"},
		"RUN /bin/sh -c apt-get update && apt-get install -y --no-install-recommends ca-certificates # buildkit",
		"COPY shop /usr/local/bin/shop # buildkit")
	if err != nil {
		return err
	}
	shop, err := n.Push(ctx, "e2e/shop:1.4", shopImg)
	if err != nil {
		return err
	}
	section("1. An image built by the release pipeline 3 days ago is admitted, and its pods run")
	sh.kubectl("", "-n", "shop", "create", "deployment", "shop", "--image="+strings.Replace(shop, "@", ":1.4@", 1), "--replicas=2")
	if _, err := sh.quiet("", "-n", "shop", "rollout", "status", "deployment/shop", "--timeout=120s"); err != nil {
		return err
	}
	sh.kubectl("", "-n", "shop", "get", "pods", "-o", "wide")

	section("2. A pod that mounts the node's Docker socket builds an image on the node")
	fmt.Println("  Its build step downloads a payload from 127.0.0.23, an address nobody approved, then it pushes the image.")
	port, stopPayload, err := e2e.PayloadServer("127.0.0.23:0")
	if err != nil {
		return err
	}
	defer stopPayload()
	cli, err := e2e.DockerCLIImage()
	if err != nil {
		return err
	}
	cliRef, err := n.Push(ctx, "tools/docker-cli:20.10", cli)
	if err != nil {
		return err
	}
	hotfix := e2e.NodeRegistry + "/e2e/hotfix:dev"
	if _, err := sh.kubectl(e2e.BuilderPodYAML(cliRef, hotfix, port), "apply", "-f", "-"); err != nil {
		return err
	}
	if err := n.WaitPod(ctx, "builds", "builder", 5*time.Minute); err != nil {
		return err
	}
	logs, _ := sh.quiet("", "-n", "builds", "logs", "builder")
	fmt.Print(indent(tail(logs, 8)))
	fmt.Println("  The node agent (a DaemonSet) saw the build and its connection, and reported them to buildguard:")
	if err := n.WaitAgentReport(ctx, 1, 1); err != nil {
		return err
	}
	fmt.Printf("  builds sent %v, connections reported %v\n",
		n.AgentMetric(ctx, `buildguard_node_agent_items_sent_total{kind="build"}`), n.AgentMetric(ctx, "buildguard_node_agent_connections_reported_total"))

	section("3. Deploying that image seconds later is denied")
	sh.kubectl("", "-n", "shop", "create", "deployment", "hotfix", "--image="+hotfix)

	section("4. Platform teams review the denials")
	plugin := filepath.Join(dir, "plugin")
	if err := os.Mkdir(plugin, 0o755); err != nil {
		return err
	}
	if err := os.Symlink(bin, filepath.Join(plugin, "kubectl-buildguard")); err != nil {
		return err
	}
	if err := waitFor(ctx, 30*time.Second, func() bool {
		out, err := sh.plugin(plugin, store.HostDSN, "denials", "-n", "shop", "-o", "json")
		return err == nil && strings.Contains(out, `"name":"hotfix"`)
	}); err != nil {
		return fmt.Errorf("the denial is not in the store: %w", err)
	}
	fmt.Println("$ kubectl buildguard denials   (BUILDGUARD_STORE_POSTGRES_DSN: the store's database)")
	out, _ := sh.plugin(plugin, store.HostDSN, "denials")
	fmt.Print(indent(out))

	took := time.Since(start)
	first, err := recordRun(took)
	section("Where to look next")
	fmt.Printf("  export KUBECONFIG=%s\n", n.Kubeconfig)
	if root, err := e2e.Root(); err == nil {
		fmt.Printf("  %s get pods -A\n", filepath.Join(root, e2e.Bin, "kubectl"))
	}
	fmt.Printf("  logs of the node's processes: %s/logs\n", e2e.NodeDir)
	if err == nil && first > 0 {
		fmt.Printf("\nThis run took %s (the first run on this machine took %s).\n", took.Round(time.Second), first.Round(time.Second))
	} else {
		fmt.Printf("\nThis run took %s: the first on this machine (builds and caches included).\n", took.Round(time.Second))
	}
	if exit {
		return nil
	}
	fmt.Println("Up until Ctrl-C; everything is removed when it stops.")
	<-ctx.Done()
	return nil
}

// recordRun appends how long this run took to the demo's record in the
// user's cache directory, and returns the first run's, or 0 when this is
// the first.
func recordRun(took time.Duration) (time.Duration, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return 0, err
	}
	path := filepath.Join(dir, "buildguard-e2e", "demo-runs.json")
	var runs []time.Duration
	if b, err := os.ReadFile(path); err == nil {
		json.Unmarshal(b, &runs)
	}
	var first time.Duration
	if len(runs) > 0 {
		first = runs[0]
	}
	runs = append(runs, took)
	b, err := json.Marshal(runs)
	if err != nil {
		return first, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return first, err
	}
	return first, os.WriteFile(path, b, 0o644)
}

func section(s string) { fmt.Printf("\n== %s\n", s) }

func indent(s string) string {
	if strings.TrimSpace(s) == "" {
		return ""
	}
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ") + "\n"
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// dsnPassword finds a DSN's password, which the demo does not show.
var dsnPassword = regexp.MustCompile(`(postgres://[^:/@]+:)[^@]+@`)

// shell runs kubectl against the node, showing commands and their output
// as a person would see them (kubectl) or not (quiet).
type shell struct {
	n   *e2e.Node
	ctx context.Context
}

func (s *shell) kubectl(stdin string, args ...string) (string, error) {
	shown := strings.Join(args, " ")
	if stdin != "" {
		shown += " <<EOF"
	}
	fmt.Printf("$ kubectl %s\n", dsnPassword.ReplaceAllString(shown, "${1}…@"))
	out, err := s.quiet(stdin, args...)
	fmt.Print(indent(out))
	return out, err
}

func (s *shell) quiet(stdin string, args ...string) (string, error) {
	var r *strings.Reader
	if stdin != "" {
		r = strings.NewReader(stdin)
	}
	if r == nil {
		return s.n.Kubectl(s.ctx, nil, args...)
	}
	return s.n.Kubectl(s.ctx, r, args...)
}

// plugin runs kubectl buildguard ARGS with the plugin directory on PATH
// and the store's DSN in the environment.
func (s *shell) plugin(dir, dsn string, args ...string) (string, error) {
	root, err := e2e.Root()
	if err != nil {
		return "", err
	}
	// kubectl takes no flags before a plugin's name.
	cmd := exec.CommandContext(s.ctx, filepath.Join(root, e2e.Bin, "kubectl"), append([]string{"buildguard"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+s.n.Kubeconfig, "PATH="+dir+":"+os.Getenv("PATH"), "BUILDGUARD_STORE_POSTGRES_DSN="+dsn)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), fmt.Errorf("kubectl buildguard: exit status %d", ee.ExitCode())
	}
	return string(out), err
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
