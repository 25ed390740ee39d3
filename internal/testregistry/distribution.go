package testregistry

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"buildguard.dev/buildguard/internal/syncbuffer"
)

// DistributionBinary is Debian's docker-registry (CNCF Distribution 2.8),
// a registry without the OCI 1.1 referrers API.
const DistributionBinary = "/usr/bin/docker-registry"

// StartDistribution runs Debian's docker-registry on a loopback port
// with its storage in a temporary directory, and returns its
// "127.0.0.1:port". It is stopped when the test ends. It has no
// referrers API: referrers live in the referrers tag schema.
func StartDistribution(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat(DistributionBinary); err != nil {
		t.Fatalf("Debian's docker-registry is not installed (apt-get install docker-registry; .ci/run does): %v", err)
	}
	dir := t.TempDir()
	// A port the kernel picks; freed just before the registry binds it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n",
		filepath.Join(dir, "data"), addr)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out := &syncbuffer.Buffer{}
	cmd := exec.Command(DistributionBinary, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return addr
			}
		}
		select {
		case <-done:
			t.Fatalf("docker-registry exited: %s", out.String())
		case <-ctx.Done():
			t.Fatalf("docker-registry did not answer on %s in 10s: %s", addr, out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
