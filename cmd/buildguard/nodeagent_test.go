package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

func TestNodeAgentFlags(t *testing.T) {
	dir := t.TempDir()
	base := []string{"node-agent", "--node=n1", "--buffer-dir=" + filepath.Join(dir, "buf"), "--metrics-listen="}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"no server", base, "--server is required"},
		{"no node", []string{"node-agent", "--server=https://bg", "--node="}, "--node is required"},
		{"bad server", append(base, "--server=bg.example"), `--server "bg.example": want https://host[:port]`},
		// The token must not cross the network in clear text.
		{"plain http server", append(base, "--server=http://bg.example"), `--server "http://bg.example": want https://host[:port]`},
		{"bad sensor", append(base, "--server=https://bg", "--sensor=kprobe"), `--sensor "kprobe"`},
		{"negative buffer bound", append(base, "--server=https://bg", "--buffer-max-bytes=-1"), "--buffer-max-bytes -1: must be positive"},
		{"too many items", append(base, "--server=https://bg", "--batch-max-items=20000"), "--batch-max-items"},
		{"arguments", append(base, "--server=https://bg", "extra"), "takes no arguments"},
		{"missing CA file", append(base, "--server=https://bg", "--ca-file=/nonexistent/ca.pem"), "no such file"},
		{"bad docker host", append(base, "--server=https://bg", "--docker-host=ssh://x"), "want unix:///path or tcp://host:port"},
		{"bad containerd address", append(base, "--server=https://bg", "--containerd-address=tcp://127.0.0.1:1"), "--containerd-address: containerd address \"tcp://127.0.0.1:1\": want unix:///path"},
		{"relative containerd path", append(base, "--server=https://bg", "--containerd-address=run/c.sock"), "want unix:///path/to/containerd.sock"},
		{"no containerd namespaces", append(base, "--server=https://bg", "--containerd-namespaces= , "), "--containerd-namespaces: want at least one namespace"},
		{"nothing watched", append(base, "--server=https://bg", "--docker-host=off", "--containerd-address="), "nothing to watch for builds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), tt.args, &stdout, &stderr); code != exitError || !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("run(%q) = %d, stderr %q; want %d and %q", tt.args, code, stderr.String(), exitError, tt.wantErr)
			}
		})
	}
}

func TestReportURL(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"https://buildguard.buildguard-system.svc", "https://buildguard.buildguard-system.svc/v1/node-reports"},
		{"https://localhost:8443/", "https://localhost:8443/v1/node-reports"},
		{"https://bg/v1/node-reports", "https://bg/v1/node-reports"},
		{"https://bg/prefix?x=1", "https://bg/prefix/v1/node-reports"},
	} {
		if got, err := reportURL(tt.in); err != nil || got != tt.want {
			t.Errorf("reportURL(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
