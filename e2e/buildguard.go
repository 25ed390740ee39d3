package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Buildguard is `buildguard serve` running as its own process against a
// control plane, with policies from ClusterBuildPolicy resources and a
// self-managed CA whose certificate it injects into the
// ValidatingWebhookConfiguration "buildguard".
type Buildguard struct {
	Proc *Process
	// URL is the webhook's URL, https://localhost:port/validate.
	URL string
	// Addr is 127.0.0.1:port.
	Addr string

	bin, dir, kubeconfig, registryCA string
	args                             []string
}

// BuildBuildguard compiles cmd/buildguard into dir and returns its path.
func BuildBuildguard(ctx context.Context, dir string) (string, error) {
	root, err := Root()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "buildguard")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/buildguard")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/buildguard: %v\n%s", err, b)
	}
	return out, nil
}

// StartBuildguard starts bin serving on a free port. registryCA is a PEM
// file of registry CAs buildguard trusts (SSL_CERT_FILE).
func StartBuildguard(ctx context.Context, bin, dir string, cp *ControlPlane, registryCA string, args ...string) (*Buildguard, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	b := &Buildguard{
		bin: bin, dir: dir, kubeconfig: cp.Kubeconfig, registryCA: registryCA, args: args,
		Addr: fmt.Sprintf("127.0.0.1:%d", port),
		URL:  fmt.Sprintf("https://localhost:%d/validate", port),
	}
	return b, b.Start(ctx)
}

// Start (re)starts the process on the same port and waits until ready.
func (b *Buildguard) Start(ctx context.Context) error {
	args := append([]string{"serve",
		"--policy-source=crd", "--kubeconfig=" + b.kubeconfig,
		"--self-managed-ca-secret=buildguard-system/buildguard-ca", "--tls-dns-names=localhost",
		"--webhook-configuration=buildguard", "--listen=" + b.Addr, "--timeout=4s", "--log-format=text",
	}, b.args...)
	p, err := Start("buildguard", filepath.Join(b.dir, "buildguard.log"), []string{"SSL_CERT_FILE=" + b.registryCA}, b.bin, args...)
	if err != nil {
		return err
	}
	b.Proc = p
	// Like a kubelet's HTTPS probe, the readiness check does not verify
	// the certificate: only the API server, with the injected caBundle,
	// needs to.
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	return waitHTTP(ctx, c, "https://"+b.Addr+"/readyz", "", p, 60*time.Second)
}

// Stop stops the process.
func (b *Buildguard) Stop() {
	if b.Proc != nil {
		b.Proc.Stop()
	}
}

// goList returns the directory of module mod, as the main module pins it.
func goList(ctx context.Context, root, mod string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", mod)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go list -m %s: %w", mod, err)
	}
	return strings.TrimSpace(string(out)), nil
}
