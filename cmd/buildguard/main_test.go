package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"buildguard.dev/buildguard/internal/testregistry"
)

func writePolicy(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(p, []byte("apiVersion: buildguard.dev/v1alpha1\nkind: Policy\n"+body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheck(t *testing.T) {
	reg := testregistry.New(t)
	reg.Push(t, "acme/old:1", testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-48 * time.Hour)}))
	reg.Push(t, "acme/fresh:1", testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-3 * time.Second)}))
	pol := writePolicy(t, "registries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n  insecure: [\"127.0.0.1:*\"]\n")
	old, fresh := reg.Host+"/acme/old:1", reg.Host+"/acme/fresh:1"
	down := testregistry.New(t)
	down.Server.Close()

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{"admitted", []string{"check", "--config", pol, old}, 0, "verdict: ALLOW", ""},
		{"denied", []string{"check", "--config", pol, old, fresh}, 1, "[fresh-image]", ""},
		{"audit never denies", []string{"check", "--config", pol, "--mode", "audit", fresh}, 0, "WOULD DENY (audit mode)", ""},
		{"registry down", []string{"check", "--config", pol, down.Host + "/acme/x:1"}, 2, "[registry-unavailable]", ""},
		{"no config", []string{"check", old}, 2, "", "--config is required"},
		{"no image", []string{"check", "--config", pol}, 2, "", "name at least one image"},
		{"bad output", []string{"check", "--config", pol, "--output", "xml", old}, 2, "", `--output "xml"`},
		{"bad flag", []string{"check", "--nope"}, 2, "", "flag provided but not defined"},
		{"missing config file", []string{"check", "--config", "/nonexistent/p.yaml", old}, 2, "", "no such file"},
		{"bad config", []string{"check", "--config", writePolicy(t, "mode: sometimes\n"), old}, 2, "", `mode: "sometimes"`},
		{"unknown command", []string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{"serve without TLS files", []string{"serve", "--config", pol}, 2, "", "--tls-cert-file is required"},
		{"serve with missing TLS file", []string{"serve", "--config", pol, "--tls-cert-file", "/nonexistent.crt", "--tls-private-key-file", "/nonexistent.key"}, 2, "", "no such file"},
		{"serve publishing no CA", []string{"serve", "--config", pol, "--tls-cert-file", "/t.crt", "--tls-private-key-file", "/t.key", "--ca-configmap", "ns/ca"}, 2, "", "--ca-configmap needs the CA"},
		{"serve with a CA file and a self-managed CA", []string{"serve", "--config", pol, "--self-managed-ca-secret", "ns/ca", "--tls-dns-names", "a.svc", "--tls-ca-file", "/ca.crt"}, 2, "", "--tls-ca-file is for --tls-cert-file"},
		{"version", []string{"version"}, 0, "buildguard dev", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.wantCode || !strings.Contains(stdout.String(), tt.wantOut) || !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("run(%q) = %d\nstdout: %s\nstderr: %s\nwant %d, stdout containing %q, stderr containing %q",
					tt.args, code, stdout.String(), stderr.String(), tt.wantCode, tt.wantOut, tt.wantErr)
			}
		})
	}
}

func TestCheckJSON(t *testing.T) {
	reg := testregistry.New(t)
	reg.Push(t, "acme/fresh:1", testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-3 * time.Second)}))
	pol := writePolicy(t, "registries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n  insecure: [\"127.0.0.1:*\"]\n")
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"check", "--config", pol, "--output", "json", reg.Host + "/acme/fresh:1", "evil.example/x:1"}, &stdout, &stderr)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr %s", code, stderr.String())
	}
	dec := json.NewDecoder(&stdout)
	var got []map[string]any
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	if len(got) != 2 {
		t.Fatalf("got %d JSON objects, want one per image", len(got))
	}
	for i, wantRule := range []string{"fresh-image", "unapproved-registry"} {
		m := got[i]
		fs, _ := m["findings"].([]any)
		if m["verdict"] != "deny" || len(fs) != 1 || fs[0].(map[string]any)["rule"] != wantRule {
			t.Errorf("object %d = %v, want verdict deny with one %s finding", i, m, wantRule)
		}
		for _, k := range []string{"image", "digest", "verdict", "findings"} {
			if _, ok := m[k]; !ok {
				t.Errorf("object %d lacks %q", i, k)
			}
		}
		f := fs[0].(map[string]any)
		for _, k := range []string{"rule", "severity", "message"} {
			if f[k] == "" || f[k] == nil {
				t.Errorf("finding %v lacks %q", f, k)
			}
		}
	}
}
