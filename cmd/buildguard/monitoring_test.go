package main

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"buildguard.dev/buildguard/internal/syncbuffer"

	"buildguard.dev/buildguard/manifests/monitoring"
)

// TestMonitoringNodeAgentMetrics runs `buildguard node-agent` and reads
// its /metrics: every node-agent metric that the dashboard and the alert
// rules of manifests/monitoring query is there. (The server's are checked
// against a running server in e2e, which has a cluster for node reports
// and audit scans.)
func TestMonitoringNodeAgentMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs it")
	}
	used := usedMetrics(t)
	exe := buildBinary(t)
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("not-a-real-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	var stderr syncbuffer.Buffer
	// No Docker, a containerd socket that does not exist yet (the agent
	// waits for it), /proc sampling. Its server does not listen.
	cmd := exec.Command(exe, "node-agent", "--server=https://"+freeAddr(t), "--token-file="+token, "--node=worker-1",
		"--buffer-dir="+filepath.Join(dir, "buffer"), "--metrics-listen="+addr, "--docker-host=off",
		"--containerd-address=unix://"+filepath.Join(dir, "containerd.sock"), "--sensor=procfs", "--log-format=text")
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("node-agent's log:\n%s", tail(stderr.String(), 4000))
		}
	})
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	var body []byte
	for {
		resp, err := c.Get("http://" + addr + "/metrics")
		if err == nil {
			var b bytes.Buffer
			b.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				body = b.Bytes()
				break
			}
		}
		select {
		case <-exited:
			t.Fatalf("the node agent exited: %v", cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no /metrics from the node agent within 30s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	missing, err := monitoring.Missing(used, "buildguard_node_agent_", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range missing {
		t.Errorf("the node agent's /metrics has no %s", m)
	}
	n := 0
	for name := range used {
		if strings.HasPrefix(name, "buildguard_node_agent_") {
			n++
		}
	}
	if n == 0 {
		t.Error("the dashboard and rules query no node-agent metric: this test checks nothing")
	}
}

// usedMetrics is every metric the dashboard and the rules query.
func usedMetrics(t *testing.T) map[string][]string {
	t.Helper()
	used, err := monitoring.Used()
	if err != nil {
		t.Fatal(err)
	}
	return used
}
