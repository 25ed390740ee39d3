package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTrustFilesAtStart: a policy whose key file or trusted root cannot
// be read stops check and serve before they judge or serve anything,
// with an error naming the field and the file.
func TestTrustFilesAtStart(t *testing.T) {
	certFile, keyFile := selfSigned(t)
	garbage := filepath.Join(t.TempDir(), "trusted_root.json")
	if err := os.WriteFile(garbage, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	reg := "registries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n"
	tests := []struct {
		name, policy, wantErr string
	}{
		{"missing key file", reg + "signatures:\n  required: true\n  keys: [\"/nonexistent/cosign.pub\"]\n  ignoreTlog: true\n", "signatures.keys: open /nonexistent/cosign.pub"},
		{"missing trusted root", reg + "signatures:\n  required: true\n  keyless: [{issuer: \"https://token.actions.githubusercontent.com\", subject: \"x\"}]\n  trustedRoot: /nonexistent/trusted_root.json\n", "signatures.trustedRoot"},
		{"unreadable trusted root", reg + "signatures:\n  required: true\n  keyless: [{issuer: \"https://token.actions.githubusercontent.com\", subject: \"x\"}]\n  trustedRoot: " + garbage + "\n", "signatures.trustedRoot"},
	}
	for _, tt := range tests {
		pol := writePolicy(t, tt.policy)
		for _, args := range [][]string{
			{"check", "--config", pol, "127.0.0.1:1/acme/app:1"},
			{"serve", "--config", pol, "--listen", "127.0.0.1:0", "--tls-cert-file", certFile, "--tls-private-key-file", keyFile},
		} {
			t.Run(tt.name+"/"+args[0], func(t *testing.T) {
				t.Setenv("KUBERNETES_SERVICE_HOST", "")
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				var stdout, stderr bytes.Buffer
				code := run(ctx, args, &stdout, &stderr)
				if code != exitError || !strings.Contains(stderr.String(), tt.wantErr) || !strings.Contains(stderr.String(), pol) {
					t.Errorf("run(%s) = %d, stderr %q, want %d and an error naming %s and %q", args[0], code, stderr.String(), exitError, pol, tt.wantErr)
				}
			})
		}
	}
}

func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "buildguard.test"}, DNSNames: []string{"buildguard.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
