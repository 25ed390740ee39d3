package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
)

// The real node: a single-node Kubernetes cluster on this machine whose
// pods really run (kubelet, containerd, runc, the CNI bridge, kube-proxy,
// kube-scheduler, CoreDNS), for the tests that install buildguard as
// users do and for the demo. Its networks, addresses and paths are fixed:
// only one node runs on a machine at a time, and a run must find what a
// crashed one left.
const (
	// NodeName is the node's Kubernetes name.
	NodeName = "node-1"
	// NodeBridge is the bridge the pods are attached to.
	NodeBridge = "bgnode0"
	// NodeIP is the bridge's address: the node's InternalIP, where the API
	// server, the kubelet and the node's registry listen, the pods'
	// gateway.
	NodeIP = "10.88.0.1"
	// PodCIDR is the pods' range, on the bridge.
	PodCIDR = "10.88.0.0/16"
	// ServiceCIDR is the Services' range; DNSServiceIP is CoreDNS's.
	ServiceCIDR  = "10.96.0.0/16"
	DNSServiceIP = "10.96.0.10"
	// NodeAPIPort is the API server's port on NodeIP.
	NodeAPIPort = 6443
	// NodeRegistry is the node's image registry (plain HTTP), which every
	// image of the node comes from: nothing is pulled from elsewhere.
	NodeRegistry = NodeIP + ":5000"
	// NodeDir holds everything of the node but the Docker cache; removed
	// by the tear-down.
	NodeDir = "/tmp/buildguard-node"

	// nodeCgroup is the cgroup root of the node's pods and builds, in
	// every hierarchy.
	nodeCgroup = "bgnode"
	// containerdSocket and dockerSocket are where the node's runtimes
	// listen: the paths every node has them at, which the node agent's
	// DaemonSet mounts.
	containerdSocket = "/run/containerd/containerd.sock"
	dockerSocket     = "/var/run/docker.sock"
	// sandboxImage is the pause image of the pod sandboxes.
	sandboxImage = NodeRegistry + "/pause:3.10.2"
)

// Node is a running real node and its control plane.
type Node struct {
	*ControlPlane
	// Registry is the node's image registry at NodeRegistry.
	Registry *NodeImageRegistry
	// Docker is the node's Docker Engine on /var/run/docker.sock, beside
	// containerd, as on many nodes; nil until StartDocker.
	Docker *Dockerd
	// Started says how long the node took to start, from nothing to a
	// Ready node with DNS.
	Started time.Duration
	// StopSteps says how long each step of Stop took.
	StopSteps string

	root        string
	state       *hostState
	procs       []*Process
	basesPushed bool
}

// NodeImageRegistry is go-containerregistry's registry over plain HTTP at
// NodeRegistry, in this process.
type NodeImageRegistry struct {
	srv *http.Server
}

// Close stops the registry.
func (r *NodeImageRegistry) Close() error { return r.srv.Close() }

// StartNode tears down what an earlier node left, checks the host, and
// starts a node: bridge and guard rules, control plane, containerd,
// kubelet, kube-proxy, the registry and CoreDNS. It returns when the node
// is Ready and CoreDNS answers. On error everything is torn down.
func StartNode(ctx context.Context) (_ *Node, err error) {
	t0 := time.Now()
	if err := TeardownNode(); err != nil {
		return nil, fmt.Errorf("an earlier node's leftovers: %w", err)
	}
	root, err := Root()
	if err != nil {
		return nil, err
	}
	if err := checkNodeHost(root); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(NodeDir, "logs"), 0o755); err != nil {
		return nil, err
	}
	st, err := recordHost()
	if err != nil {
		os.RemoveAll(NodeDir)
		return nil, err
	}
	if err := st.save(); err != nil {
		os.RemoveAll(NodeDir)
		return nil, err
	}
	n := &Node{root: root, state: st}
	defer func() {
		if err != nil {
			if terr := n.Stop(); terr != nil {
				err = fmt.Errorf("%w; and %v", err, terr)
			}
		}
	}()
	if err := n.network(); err != nil {
		return nil, err
	}
	if err := n.controlPlane(ctx); err != nil {
		return nil, err
	}
	if err := n.startRegistry(); err != nil {
		return nil, err
	}
	if err := n.pushSystemImages(ctx); err != nil {
		return nil, err
	}
	if err := n.startContainerd(ctx); err != nil {
		return nil, err
	}
	if err := n.startKubelet(ctx); err != nil {
		return nil, err
	}
	if err := n.startKubeProxy(ctx); err != nil {
		return nil, err
	}
	if err := n.startDNS(ctx); err != nil {
		return nil, err
	}
	n.Started = time.Since(t0)
	return n, nil
}

// checkNodeHost checks what the node needs from the host, and that no
// other node or runtime holds its places, before anything changes.
func checkNodeHost(root string) error {
	var missing []string
	if os.Geteuid() != 0 {
		return errors.New("the real node needs root (make test runs as root in CI)")
	}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl", "etcd", "containerd", "containerd-shim-runc-v2", "ctr", "coredns", "pause"} {
		if _, err := os.Stat(filepath.Join(root, Bin, b)); err != nil {
			missing = append(missing, filepath.Join(Bin, b)+" (make tools)")
		}
	}
	for _, f := range []struct{ path, pkg string }{
		{"/usr/sbin/runc", "runc"}, {"/usr/lib/cni/bridge", "containernetworking-plugins"},
		{"/usr/lib/cni/host-local", "containernetworking-plugins"}, {"/usr/lib/cni/loopback", "containernetworking-plugins"},
		{"/usr/lib/cni/portmap", "containernetworking-plugins"},
	} {
		if _, err := os.Stat(f.path); err != nil {
			missing = append(missing, f.path+" (Debian's "+f.pkg+")")
		}
	}
	for _, c := range []struct{ cmd, pkg string }{
		{"iptables", "iptables"}, {"iptables-save", "iptables"}, {"iptables-restore", "iptables"},
		{"ip6tables-save", "iptables"}, {"conntrack", "conntrack"}, {"ip", "iproute2"},
	} {
		if _, err := exec.LookPath(c.cmd); err != nil {
			missing = append(missing, c.cmd+" (Debian's "+c.pkg+")")
		}
	}
	// iptables-nft makes the tables it is asked for; only nft removes them.
	if v, err := exec.Command("iptables", "-V").Output(); err == nil && strings.Contains(string(v), "nf_tables") {
		if _, err := exec.LookPath("nft"); err != nil {
			missing = append(missing, "nft (Debian's nftables)")
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the real node needs: %s", strings.Join(missing, ", "))
	}
	if exec.Command("ip", "link", "show", NodeBridge).Run() == nil {
		return fmt.Errorf("interface %s exists and is not the record of an earlier node: delete it (ip link del %s)", NodeBridge, NodeBridge)
	}
	// No route of the host may overlap the node's ranges.
	for _, cidr := range []string{PodCIDR, ServiceCIDR} {
		out, err := exec.Command("ip", "-4", "route", "show", "match", cidr).Output()
		if err != nil {
			return err
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if line != "" && !strings.HasPrefix(line, "default ") {
				return fmt.Errorf("the host has a route overlapping %s: %s", cidr, line)
			}
		}
	}
	for _, s := range []string{containerdSocket, dockerSocket} {
		if c, err := net.DialTimeout("unix", s, time.Second); err == nil {
			c.Close()
			return fmt.Errorf("%s answers: another containerd or dockerd runs where the node's would", s)
		}
	}
	return nil
}

// network creates the bridge with the node's address and the guard
// rules: no packet from or to the pod range leaves the machine, and no
// packet for a Service address that kube-proxy did not translate either.
func (n *Node) network() error {
	for _, args := range [][]string{
		{"ip", "link", "add", NodeBridge, "type", "bridge"},
		{"ip", "addr", "add", NodeIP + "/16", "dev", NodeBridge},
		{"ip", "link", "set", NodeBridge, "up"},
		{"iptables", "-t", "mangle", "-N", "BGNODE-GUARD"},
		{"iptables", "-t", "mangle", "-A", "BGNODE-GUARD", "-o", NodeBridge, "-j", "RETURN"},
		{"iptables", "-t", "mangle", "-A", "BGNODE-GUARD", "-o", "lo", "-j", "RETURN"},
		{"iptables", "-t", "mangle", "-A", "BGNODE-GUARD", "-m", "comment", "--comment", "buildguard e2e node: pod traffic stays on this machine", "-j", "DROP"},
		{"iptables", "-t", "mangle", "-I", "POSTROUTING", "1", "-s", PodCIDR, "-j", "BGNODE-GUARD"},
		{"iptables", "-t", "mangle", "-I", "POSTROUTING", "1", "-d", PodCIDR, "-j", "BGNODE-GUARD"},
		{"iptables", "-t", "mangle", "-I", "POSTROUTING", "1", "-d", ServiceCIDR, "-m", "comment", "--comment", "buildguard e2e node: untranslated Service address", "-j", "DROP"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

func (n *Node) start(name string, env []string, bin string, args ...string) (*Process, error) {
	p, err := Start(name, filepath.Join(NodeDir, "logs", name+".log"), env, bin, args...)
	if err != nil {
		return nil, err
	}
	n.procs = append(n.procs, p)
	return p, n.state.addProc(p)
}

func (n *Node) bin(name string) string { return filepath.Join(n.root, Bin, name) }

// controlPlane starts etcd, the API server on NodeIP, the controller
// manager and the scheduler.
func (n *Node) controlPlane(ctx context.Context) error {
	pki := filepath.Join(NodeDir, "pki")
	for _, d := range []string{pki, filepath.Join(NodeDir, "control-plane")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	// The API server authenticates to the kubelet with a client
	// certificate; everything else uses tokens.
	kc, err := writeClientCert(pki, "kube-apiserver-kubelet-client", "system:masters")
	if err != nil {
		return err
	}
	tok := map[string]string{}
	for _, who := range []string{"kubelet", "scheduler", "proxy"} {
		tok[who] = randomToken()
	}
	cp, err := StartControlPlaneWith(ctx, filepath.Join(NodeDir, "control-plane"), ControlPlaneOptions{
		Address: NodeIP, Port: NodeAPIPort, ServiceCIDR: ServiceCIDR,
		ServingHosts: []string{"10.96.0.1", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		Tokens: []string{
			tok["kubelet"] + ",system:node:" + NodeName + "," + NodeName + `,"system:nodes"`,
			tok["scheduler"] + ",system:kube-scheduler,kube-scheduler",
			tok["proxy"] + ",system:kube-proxy,kube-proxy",
		},
		APIServerArgs: []string{
			"--endpoint-reconciler-type=lease", "--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--kubelet-client-certificate=" + kc.cert, "--kubelet-client-key=" + kc.key,
			"--kubelet-preferred-address-types=InternalIP,Hostname",
		},
		ControllerManagerArgs: []string{"--flex-volume-plugin-dir=" + filepath.Join(NodeDir, "var", "kubelet-plugins")},
	})
	if cp != nil {
		n.ControlPlane = cp
		for _, p := range cp.procs {
			if err := n.state.addProc(p); err != nil {
				return err
			}
		}
	}
	if err != nil {
		return err
	}
	for who, t := range tok {
		cfg := strings.Replace(cp.kubeconfig(), AdminToken, t, 1)
		if err := os.WriteFile(filepath.Join(NodeDir, who+".kubeconfig"), []byte(cfg), 0o600); err != nil {
			return err
		}
	}
	_, err = n.start("kube-scheduler", nil, n.bin("kube-scheduler"),
		"--kubeconfig="+filepath.Join(NodeDir, "scheduler.kubeconfig"),
		"--authentication-kubeconfig="+filepath.Join(NodeDir, "scheduler.kubeconfig"),
		"--authorization-kubeconfig="+filepath.Join(NodeDir, "scheduler.kubeconfig"),
		"--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0")
	return err
}

// startRegistry serves the node's registry at NodeRegistry.
func (n *Node) startRegistry() error {
	ln, err := net.Listen("tcp", NodeRegistry)
	if err != nil {
		return fmt.Errorf("the node's registry: %w", err)
	}
	r := &NodeImageRegistry{srv: &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler:           ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))),
	}}
	go r.srv.Serve(ln)
	n.Registry = r
	return nil
}

// containerdConfig is the node's containerd: its root and state under
// NodeDir, its socket where nodes have it, runc from Debian, the CNI
// bridge, images from the node's registry only.
const containerdConfig = `version = 4
root = "{{DIR}}/var/containerd"
state = "{{DIR}}/run/containerd"
# Nothing outside NodeDir: no /opt/containerd, no NRI socket.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{{SOCK}}"
[ttrpc]
  address = "{{SOCK}}.ttrpc"
[debug]
  address = ""

[plugins.'io.containerd.cri.v1.runtime']
  # Without CAP_SYS_RESOURCE in the bounding set (as on this kind of
  # machine) runc cannot set a negative oom_score_adj.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '/usr/sbin/runc'
        Root = '{{DIR}}/run/runc'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['/usr/lib/cni']
    conf_dir = '{{DIR}}/etc/cni'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{{SANDBOX}}'
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = '{{DIR}}/etc/containerd/certs.d'

# The transfer service pulls for the CRI too: the same registries.
[plugins.'io.containerd.transfer.v1.local']
  config_path = '{{DIR}}/etc/containerd/certs.d'

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
`

// cniConfig attaches pods to the bridge with addresses of PodCIDR and a
// route to the Services only: no default route, no masquerading.
const cniConfig = `{
  "cniVersion": "1.0.0",
  "name": "bgnode",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "{{BRIDGE}}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "{{PODS}}", "gateway": "{{IP}}"}]],
        "routes": [{"dst": "{{SERVICES}}"}],
        "dataDir": "{{DIR}}/var/cni-ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
`

func nodeTemplate(s string) string {
	return strings.NewReplacer("{{DIR}}", NodeDir, "{{SOCK}}", containerdSocket, "{{SANDBOX}}", sandboxImage,
		"{{BRIDGE}}", NodeBridge, "{{PODS}}", PodCIDR, "{{IP}}", NodeIP, "{{SERVICES}}", ServiceCIDR,
		"{{REGISTRY}}", NodeRegistry, "{{DNS}}", DNSServiceIP, "{{NODE}}", NodeName).Replace(s)
}

func writeFiles(files map[string]string) error {
	for path, content := range files {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// startContainerd starts containerd and waits until it answers.
func (n *Node) startContainerd(ctx context.Context) error {
	certs := filepath.Join(NodeDir, "etc", "containerd", "certs.d")
	if err := writeFiles(map[string]string{
		filepath.Join(NodeDir, "etc", "containerd", "config.toml"): nodeTemplate(containerdConfig),
		filepath.Join(NodeDir, "etc", "cni", "10-bgnode.conflist"): nodeTemplate(cniConfig),
		// The node's registry over plain HTTP.
		filepath.Join(certs, NodeRegistry, "hosts.toml"): nodeTemplate(`server = "http://{{REGISTRY}}"
[host."http://{{REGISTRY}}"]
  capabilities = ["pull", "resolve", "push"]
`),
		// Any other registry: a closed port on loopback, so that an image
		// named by mistake fails at once instead of being fetched from
		// the internet (or its name even looked up).
		filepath.Join(certs, "_default", "hosts.toml"): `server = "http://127.0.0.1:9"
[host."http://127.0.0.1:9"]
  capabilities = ["pull", "resolve"]
`,
	}); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(containerdSocket), 0o711); err != nil {
		return err
	}
	// containerd finds its shim on PATH: ours, not another version's.
	env := []string{"PATH=" + filepath.Join(n.root, Bin) + ":/usr/sbin:/usr/bin:/sbin:/bin"}
	p, err := n.start("containerd", env, n.bin("containerd"), "--config", filepath.Join(NodeDir, "etc", "containerd", "config.toml"))
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.CommandContext(ctx, n.bin("ctr"), "--address", containerdSocket, "--timeout", "2s", "version").CombinedOutput()
		if err == nil {
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("containerd exited: %v\n%s", p.err, p.Tail(4000))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd does not answer: %v: %s\n%s", err, out, p.Tail(4000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// kubeletConfig: cgroupfs under the node's own cgroup root, x509 client
// authentication of the API server, the pods' DNS CoreDNS, the node's
// paths under NodeDir.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: /{{CGROUP}}
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://{{SOCK}}
address: {{IP}}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: {{DIR}}/pki/kubelet-client-ca.crt}
authorization:
  mode: AlwaysAllow
clusterDNS: [{{DNS}}]
clusterDomain: cluster.local
resolvConf: {{DIR}}/etc/resolv.conf
podLogsDir: {{DIR}}/var/log/pods
volumePluginDir: {{DIR}}/var/kubelet-plugins
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
`

// startKubelet starts the kubelet, waits for the node to be Ready, and
// restores the kernel sysctls the kubelet set at start.
func (n *Node) startKubelet(ctx context.Context) error {
	if err := makeNodeCgroups(); err != nil {
		return err
	}
	if err := writeFiles(map[string]string{
		filepath.Join(NodeDir, "etc", "kubelet.yaml"): strings.ReplaceAll(nodeTemplate(kubeletConfig), "{{CGROUP}}", nodeCgroup),
		// No upstream DNS: the pods resolve the cluster's names only.
		filepath.Join(NodeDir, "etc", "resolv.conf"): "# buildguard e2e node: no DNS outside the cluster\noptions ndots:1\n",
	}); err != nil {
		return err
	}
	kubelet, err := n.start("kubelet", nil, n.bin("kubelet"),
		"--config="+filepath.Join(NodeDir, "etc", "kubelet.yaml"),
		"--kubeconfig="+filepath.Join(NodeDir, "kubelet.kubeconfig"),
		"--hostname-override="+NodeName, "--node-ip="+NodeIP,
		"--root-dir="+filepath.Join(NodeDir, "var", "kubelet"), "-v=2")
	if err != nil {
		return err
	}
	if err := n.waitFor(ctx, 120*time.Second, kubelet, "node "+NodeName+" Ready", func() error {
		out, err := n.Kubectl(ctx, nil, "get", "node", NodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err != nil || out != "True" {
			return fmt.Errorf("Ready=%q %v", out, err)
		}
		return nil
	}); err != nil {
		return err
	}
	// The kubelet sets kernel.panic, kernel.panic_on_oops,
	// vm.overcommit_memory and the keyring limits once at start: on a
	// shared machine they go back now, not only at the end.
	if left := restoreSysctls(n.state.Sysctls); len(left) > 0 {
		return fmt.Errorf("restoring sysctls: %s", strings.Join(left, "; "))
	}
	return nil
}

// makeNodeCgroups creates the node's cgroup root in every hierarchy (the
// kubelet wants it to exist), with the cpuset of the host's.
func makeNodeCgroups() error {
	for _, m := range cgroupMounts() {
		d := filepath.Join(m, nodeCgroup)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(m, f)); err == nil {
				if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
					return fmt.Errorf("%s: %w", filepath.Join(d, f), err)
				}
			}
		}
		// cgroup v2: the controllers the kubelet needs, for the children.
		if _, err := os.Stat(filepath.Join(m, "cgroup.subtree_control")); err == nil && len(cgroupMounts()) == 1 {
			for _, c := range []string{"cpuset", "cpu", "io", "memory", "hugetlb", "pids"} {
				os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte("+"+c), 0o644)
			}
		}
	}
	return nil
}

// kubeProxyConfig: iptables mode, node ports on the node's address only,
// conntrack and the other sysctls left alone.
const kubeProxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: {{DIR}}/proxy.kubeconfig}
hostnameOverride: {{NODE}}
bindAddress: {{IP}}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: {{PODS}}
nodePortAddresses: ["{{IP}}/32"]
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
`

func (n *Node) startKubeProxy(ctx context.Context) error {
	if err := writeFiles(map[string]string{filepath.Join(NodeDir, "etc", "kube-proxy.yaml"): nodeTemplate(kubeProxyConfig)}); err != nil {
		return err
	}
	p, err := n.start("kube-proxy", nil, n.bin("kube-proxy"), "--config="+filepath.Join(NodeDir, "etc", "kube-proxy.yaml"))
	if err != nil {
		return err
	}
	return waitHTTP(ctx, http.DefaultClient, "http://127.0.0.1:10256/healthz", "", p, 60*time.Second)
}

// startDNS installs CoreDNS as Kubernetes's own addon manifest has it
// (cluster/addons/dns/coredns), with the image of the node's registry and
// a Corefile without upstream servers, and waits until it is ready.
func (n *Node) startDNS(ctx context.Context) error {
	kdir, err := goList(ctx, filepath.Join(n.root, "tools", "kube"), "k8s.io/kubernetes")
	if err != nil {
		return err
	}
	base, err := os.ReadFile(filepath.Join(kdir, "cluster", "addons", "dns", "coredns", "coredns.yaml.base"))
	if err != nil {
		return err
	}
	m := strings.NewReplacer("__DNS__SERVER__", DNSServiceIP, "__DNS__DOMAIN__", "cluster.local",
		"__DNS__MEMORY__LIMIT__", "170Mi", "registry.k8s.io/coredns/coredns:", NodeRegistry+"/coredns/coredns:").Replace(string(base))
	i, j := strings.Index(m, "  Corefile: |"), strings.Index(m, "---\napiVersion: apps/v1")
	if i < 0 || j < i {
		return errors.New("coredns.yaml.base: no Corefile before the Deployment")
	}
	m = m[:i] + `  Corefile: |
    .:53 {
        errors
        health {
            lameduck 5s
        }
        ready
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
        cache 30
    }
` + m[j:]
	if _, err := n.Kubectl(ctx, strings.NewReader(m), "apply", "-f", "-"); err != nil {
		return err
	}
	_, err = n.Kubectl(ctx, nil, "-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=120s")
	return err
}

// waitFor retries f until it returns nil, p exits, or timeout passes.
func (n *Node) waitFor(ctx context.Context, timeout time.Duration, p *Process, what string, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if s := (errStop{}); errors.As(err, &s) {
			return s.error
		}
		if p != nil && p.Exited() {
			return fmt.Errorf("%s: %s exited: %v\n%s", what, p.Name, p.err, p.Tail(4000))
		}
		if time.Now().After(deadline) {
			tail := ""
			if p != nil {
				tail = "\n" + p.Tail(4000)
			}
			return fmt.Errorf("%s: not within %s: %v%s", what, timeout, err, tail)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Processes returns the node's processes and its control plane's.
func (n *Node) Processes() []*Process {
	var out []*Process
	if n.ControlPlane != nil {
		out = append(out, n.ControlPlane.procs...)
	}
	return append(out, n.procs...)
}

// Stop deletes the workloads, letting the kubelet stop their containers
// and release their network, stops every process, and tears the node
// down (TeardownNode): what it could not remove is in the error.
func (n *Node) Stop() error {
	var steps []string
	step := func(name string, t0 time.Time) {
		steps = append(steps, fmt.Sprintf("%s %s", name, time.Since(t0).Round(100*time.Millisecond)))
	}
	t0 := time.Now()
	if n.ControlPlane != nil && len(n.procs) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		n.drain(ctx)
		cancel()
		step("drain", t0)
	}
	for i := len(n.procs) - 1; i >= 0; i-- {
		t0 = time.Now()
		n.procs[i].Stop()
		step(n.procs[i].Name, t0)
	}
	t0 = time.Now()
	if n.ControlPlane != nil {
		n.ControlPlane.Stop()
	}
	if n.Registry != nil {
		n.Registry.Close()
	}
	step("control plane", t0)
	t0 = time.Now()
	err := TeardownNode()
	step("tear-down", t0)
	n.StopSteps = strings.Join(steps, ", ")
	return err
}

// drain deletes every workload and waits until containerd runs no task.
func (n *Node) drain(ctx context.Context) {
	// Webhooks could be left failing closed: they do not see deletions,
	// but nothing may stand in the way of the tear-down.
	n.Kubectl(ctx, nil, "delete", "validatingwebhookconfigurations,mutatingwebhookconfigurations", "--all", "--wait=false")
	// The controllers go first, leaving their pods (a cascading delete
	// would give each its own grace period, often 30s), then the pods
	// with a short one.
	n.Kubectl(ctx, nil, "delete", "daemonsets,deployments,statefulsets,replicasets,jobs,cronjobs,replicationcontrollers", "--all", "-A", "--cascade=orphan", "--wait=false")
	n.Kubectl(ctx, nil, "delete", "pods", "--all", "-A", "--grace-period=1", "--wait=false")
	n.waitFor(ctx, 60*time.Second, nil, "containers stopped", func() error {
		out, err := exec.CommandContext(ctx, n.bin("ctr"), "--address", containerdSocket, "--timeout", "5s", "-n", "k8s.io", "tasks", "ls").Output()
		if err != nil {
			return nil // containerd is gone: the tear-down takes it from here
		}
		if strings.Contains(string(out), "RUNNING") {
			if os.Getenv("BGNODE_DEBUG") != "" {
				pods, _ := n.Kubectl(ctx, nil, "get", "pods", "-A", "-o", "wide")
				fmt.Fprintf(os.Stderr, "%s drain:\n%s\n%s\n", time.Now().Format("15:04:05.0"), out, pods)
			}
			return errors.New("tasks running")
		}
		return nil
	})
}

// clientCert is a CA and a client certificate it signed.
type clientCert struct{ ca, cert, key string }

// writeClientCert writes a CA (kubelet-client-ca.crt) and a client
// certificate for cn in group org, valid for a day, into dir.
func writeClientCert(dir, cn, org string) (clientCert, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return clientCert{}, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "buildguard e2e kubelet-client CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return clientCert{}, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return clientCert{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return clientCert{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn, Organization: []string{org}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return clientCert{}, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return clientCert{}, err
	}
	c := clientCert{ca: filepath.Join(dir, "kubelet-client-ca.crt"), cert: filepath.Join(dir, "kubelet-client.crt"), key: filepath.Join(dir, "kubelet-client.key")}
	for path, b := range map[string][]byte{
		c.ca:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		c.cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		c.key:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return clientCert{}, err
		}
	}
	return c, nil
}

func randomToken() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// SaveLogs copies the logs of the node's processes and of its pods'
// containers (with those KeepPodLogs kept) to failed-node-logs beside the Docker cache (replacing what
// an earlier failure kept there), before the tear-down removes them, and
// returns that directory.
func (n *Node) SaveLogs() (string, error) {
	dst := filepath.Join(filepath.Dir(nodeCacheDockerRoot()), "failed-node-logs")
	if err := os.RemoveAll(dst); err != nil {
		return "", err
	}
	for _, src := range []string{filepath.Join(NodeDir, "logs"), filepath.Join(NodeDir, "control-plane"), filepath.Join(NodeDir, "var", "log", "pods"), filepath.Join(NodeDir, "kept-pod-logs")} {
		err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".log") {
				return nil
			}
			rel, _ := filepath.Rel(NodeDir, path)
			b, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			out := filepath.Join(dst, rel)
			if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
				return err
			}
			return os.WriteFile(out, b, 0o644)
		})
		if err != nil {
			return "", err
		}
	}
	return dst, nil
}

// KeepPodLogs copies the container logs of the pods of namespace every
// second until ctx ends, so that those of pods deleted meanwhile (the
// kubelet removes their logs with them) are there for SaveLogs.
func (n *Node) KeepPodLogs(ctx context.Context, namespace string) {
	for {
		files, _ := filepath.Glob(filepath.Join(NodeDir, "var", "log", "pods", namespace+"_*", "*", "*.log"))
		for _, f := range files {
			rel, _ := filepath.Rel(filepath.Join(NodeDir, "var", "log", "pods"), f)
			if b, err := os.ReadFile(f); err == nil {
				out := filepath.Join(NodeDir, "kept-pod-logs", rel)
				if os.MkdirAll(filepath.Dir(out), 0o755) == nil {
					os.WriteFile(out, b, 0o644)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}
