package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"buildguard.dev/buildguard/internal/testregistry"
)

// TestCheckProvenance: `buildguard check` reports an unsigned image and
// one without provenance under a policy that requires both.
func TestCheckProvenance(t *testing.T) {
	reg := testregistry.New(t)
	reg.Push(t, "acme/app:1", testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-48 * time.Hour)}))
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(key.Public())
	keyFile := filepath.Join(t.TempDir(), "cosign.pub")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	pol := writePolicy(t, "registries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n  insecure: [\"127.0.0.1:*\"]\n"+
		"signatures:\n  required: true\n  keys: [\""+keyFile+"\"]\n  ignoreTlog: true\n"+
		"provenance:\n  required: true\n  builders: [\"https://github.com/slsa-framework/**\"]\n")
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"check", "--config", pol, reg.Host + "/acme/app:1"}, &stdout, &stderr)
	out := stdout.String()
	if code != exitDenied || !strings.Contains(out, "[unsigned]") || !strings.Contains(out, "[missing-provenance]") {
		t.Errorf("check = %d, %q (stderr %q), want %d with [unsigned] and [missing-provenance]", code, out, stderr.String(), exitDenied)
	}
}
