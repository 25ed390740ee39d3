// Package e2e runs buildguard against real components on loopback: etcd,
// kube-apiserver and kube-controller-manager built from pinned modules
// (tools/build.sh), go-containerregistry's registry over TLS, and
// buildguard as its own process. The tests in this package and the demo
// use it. Every process it starts dies with the process that started it.
package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"buildguard.dev/buildguard/internal/selfsigned"
)

// Bin is where tools/build.sh puts the control-plane binaries, relative
// to the repository root.
const Bin = "bin"

// AdminToken authenticates the harness's kubectl as a cluster admin.
const AdminToken = "buildguard-e2e-admin-token"

// kcmToken authenticates kube-controller-manager.
const kcmToken = "buildguard-e2e-kcm-token"

// auditPolicy records admission decisions of workload writes, with the
// annotations webhooks add, at the Metadata level.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch"]
  resources:
  - group: ""
    resources: ["pods", "replicationcontrollers"]
  - group: "apps"
    resources: ["deployments", "replicasets", "statefulsets", "daemonsets"]
  - group: "batch"
    resources: ["jobs", "cronjobs"]
- level: None
`

// ControlPlane is etcd, kube-apiserver and kube-controller-manager on
// loopback.
type ControlPlane struct {
	Dir        string // work directory
	Kubeconfig string // admin kubeconfig
	URL        string // https://127.0.0.1:port of the API server
	AuditLog   string // the API server's audit log
	CAPEM      []byte // CA of the API server's serving certificate

	root  string
	procs []*Process
}

// Process is a child process with its output in a log file.
type Process struct {
	Name string
	Log  string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	once sync.Once
}

// Start runs bin with args and, besides this process's environment, env;
// its output is appended to logPath. It is killed, with its process
// group, when the calling process dies.
func Start(name, logPath string, env []string, bin string, args ...string) (*Process, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process's ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop ends the process group: SIGTERM, then SIGKILL after 5s.
func (p *Process) Stop() {
	p.once.Do(func() {
		if p.Exited() {
			return
		}
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	})
}

// Tail returns the last n bytes of the process's log.
func (p *Process) Tail(n int) string {
	b, _ := os.ReadFile(p.Log)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// FreePort returns a TCP port free on 127.0.0.1 now.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Root finds the repository root (the directory holding go.mod) from the
// working directory upwards.
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "tools", "build.sh")); err == nil {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root not found")
		}
		dir = parent
	}
}

// binary returns the path of a control-plane binary, or an error saying
// how to build it.
func binary(root, name string) (string, error) {
	p := filepath.Join(root, Bin, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s is missing: run tools/build.sh (make tools) first", p)
	}
	return p, nil
}

// ControlPlaneOptions say where and how StartControlPlaneWith runs the
// control plane. The zero value is StartControlPlane's: on loopback, on
// free ports, with no Service endpoints.
type ControlPlaneOptions struct {
	// Address is where the API server listens and what it advertises as
	// the kubernetes Service's endpoint. The default is 127.0.0.1.
	Address string
	// Port is the API server's port. The default is a free one.
	Port int
	// ServiceCIDR is the Service IP range. The default is 10.96.0.0/24.
	ServiceCIDR string
	// ServingHosts are more DNS names and IPs of the API server's serving
	// certificate (besides 127.0.0.1, localhost and Address).
	ServingHosts []string
	// Tokens are more lines of the API server's token file:
	// token,user,uid,"group1,group2".
	Tokens []string
	// APIServerArgs and ControllerManagerArgs are added to those
	// commands' flags; a flag given again here wins.
	APIServerArgs, ControllerManagerArgs []string
}

// StartControlPlane starts etcd, kube-apiserver and kube-controller-manager
// on free loopback ports, with work files under dir, and waits until the
// API server is ready.
func StartControlPlane(ctx context.Context, dir string) (*ControlPlane, error) {
	return StartControlPlaneWith(ctx, dir, ControlPlaneOptions{})
}

// StartControlPlaneWith is StartControlPlane as opts say.
func StartControlPlaneWith(ctx context.Context, dir string, opts ControlPlaneOptions) (_ *ControlPlane, err error) {
	if opts.Address == "" {
		opts.Address = "127.0.0.1"
	}
	if opts.ServiceCIDR == "" {
		opts.ServiceCIDR = "10.96.0.0/24"
	}
	root, err := Root()
	if err != nil {
		return nil, err
	}
	cp := &ControlPlane{Dir: dir, root: root}
	defer func() {
		if err != nil {
			cp.Stop()
		}
	}()
	etcdBin, err := binary(root, "etcd")
	if err != nil {
		return nil, err
	}
	apiBin, err := binary(root, "kube-apiserver")
	if err != nil {
		return nil, err
	}
	kcmBin, err := binary(root, "kube-controller-manager")
	if err != nil {
		return nil, err
	}

	// etcd
	clientPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	peerPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	etcd, err := Start("etcd", filepath.Join(dir, "etcd.log"), nil, etcdBin,
		"--name=e2e", "--data-dir="+filepath.Join(dir, "etcd-data"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=e2e="+peerURL, "--log-level=warn", "--unsafe-no-fsync")
	if err != nil {
		return nil, err
	}
	cp.procs = append(cp.procs, etcd)
	if err := waitHTTP(ctx, http.DefaultClient, etcdURL+"/health", "", etcd, 30*time.Second); err != nil {
		return nil, err
	}

	// Certificates, service-account keys, tokens, audit policy.
	pki := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return nil, err
	}
	certs, err := selfsigned.Write(pki, append([]string{"127.0.0.1", "localhost", opts.Address}, opts.ServingHosts...)...)
	if err != nil {
		return nil, err
	}
	cp.CAPEM = certs.CAPEM
	saKey, saPub, err := writeServiceAccountKeys(pki)
	if err != nil {
		return nil, err
	}
	tokens := filepath.Join(pki, "tokens.csv")
	// kube-controller-manager authenticates as itself, so buildguard sees
	// what its controllers create as a controller's.
	tokenLines := append([]string{AdminToken + `,e2e-admin,e2e-admin,"system:masters"`,
		kcmToken + `,system:kube-controller-manager,kcm,"system:masters"`}, opts.Tokens...)
	if err := os.WriteFile(tokens, []byte(strings.Join(tokenLines, "\n")+"\n"), 0o600); err != nil {
		return nil, err
	}
	policyPath := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(policyPath, []byte(auditPolicy), 0o644); err != nil {
		return nil, err
	}
	cp.AuditLog = filepath.Join(dir, "audit.log")

	apiPort := opts.Port
	if apiPort == 0 {
		if apiPort, err = FreePort(); err != nil {
			return nil, err
		}
	}
	cp.URL = "https://" + net.JoinHostPort(opts.Address, fmt.Sprint(apiPort))
	api, err := Start("kube-apiserver", filepath.Join(dir, "kube-apiserver.log"), nil, apiBin, withFlags([]string{
		"--etcd-servers=" + etcdURL,
		fmt.Sprintf("--secure-port=%d", apiPort), "--bind-address=" + opts.Address, "--advertise-address=" + opts.Address,
		"--tls-cert-file=" + certs.Cert, "--tls-private-key-file=" + certs.Key, "--client-ca-file=" + certs.CA,
		"--token-auth-file=" + tokens,
		"--service-account-issuer=https://kubernetes.default.svc", "--service-account-key-file=" + saPub,
		"--service-account-signing-key-file=" + saKey, "--api-audiences=https://kubernetes.default.svc",
		"--service-cluster-ip-range=" + opts.ServiceCIDR, "--authorization-mode=RBAC",
		"--audit-policy-file=" + policyPath, "--audit-log-path=" + cp.AuditLog,
		"--audit-log-mode=blocking", "--cert-dir=" + filepath.Join(dir, "apiserver-certs"),
		"--allow-privileged=true", "--profiling=false", "--endpoint-reconciler-type=none", "--enable-priority-and-fairness=false",
	}, opts.APIServerArgs)...)
	if err != nil {
		return nil, err
	}
	cp.procs = append(cp.procs, api)
	if err := waitHTTP(ctx, cp.client(), cp.URL+"/readyz", AdminToken, api, 90*time.Second); err != nil {
		return nil, err
	}
	cp.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(cp.Kubeconfig, []byte(cp.kubeconfig()), 0o600); err != nil {
		return nil, err
	}

	kcmKubeconfig := filepath.Join(dir, "kcm.kubeconfig")
	if err := os.WriteFile(kcmKubeconfig, []byte(strings.Replace(cp.kubeconfig(), AdminToken, kcmToken, 1)), 0o600); err != nil {
		return nil, err
	}
	kcm, err := Start("kube-controller-manager", filepath.Join(dir, "kube-controller-manager.log"), nil, kcmBin, withFlags([]string{
		"--kubeconfig=" + kcmKubeconfig, "--leader-elect=false",
		"--service-account-private-key-file=" + saKey, "--root-ca-file=" + certs.CA,
		"--use-service-account-credentials=false", "--secure-port=0",
	}, opts.ControllerManagerArgs)...)
	if err != nil {
		return nil, err
	}
	cp.procs = append(cp.procs, kcm)
	return cp, nil
}

// withFlags returns base with more added; a flag of more replaces the
// same flag of base (list flags like --authorization-mode would add up).
func withFlags(base, more []string) []string {
	name := func(arg string) string { n, _, _ := strings.Cut(arg, "="); return n }
	given := map[string]bool{}
	for _, a := range more {
		given[name(a)] = true
	}
	var out []string
	for _, a := range base {
		if !given[name(a)] {
			out = append(out, a)
		}
	}
	return append(out, more...)
}

func (cp *ControlPlane) client() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cp.CAPEM)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func (cp *ControlPlane) kubeconfig() string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
`, cp.URL, b64(cp.CAPEM), AdminToken)
}

// Kubectl runs bin/kubectl against the control plane and returns its
// combined output.
func (cp *ControlPlane) Kubectl(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	bin, err := binary(cp.root, "kubectl")
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig=" + cp.Kubeconfig}, args...)...)
	cmd.Stdin = stdin
	cmd.Dir = cp.root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Processes returns the control plane's processes.
func (cp *ControlPlane) Processes() []*Process { return cp.procs }

// Stop stops every process, last started first.
func (cp *ControlPlane) Stop() {
	for i := len(cp.procs) - 1; i >= 0; i-- {
		cp.procs[i].Stop()
	}
}

func waitHTTP(ctx context.Context, c *http.Client, url, token string, p *Process, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if p.Exited() {
			return fmt.Errorf("%s exited: %v\n%s", p.Name, p.err, p.Tail(4000))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready at %s within %s (last error %v)\n%s", p.Name, url, timeout, err, p.Tail(4000))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func writeServiceAccountKeys(dir string) (keyPath, pubPath string, err error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return "", "", err
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return "", "", err
	}
	keyPath, pubPath = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return "", "", err
	}
	return keyPath, pubPath, nil
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
