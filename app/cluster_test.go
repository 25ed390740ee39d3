package app

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"

	"buildguard.dev/buildguard/apis/v1alpha1"
	"buildguard.dev/buildguard/e2e"
	"buildguard.dev/buildguard/internal/selfsigned"
	"buildguard.dev/buildguard/internal/syncbuffer"
)

// startCluster starts etcd and kube-apiserver with buildguard's CRDs
// (manifests/crd) served, and returns the admin's kubeconfig and a
// client.
func startCluster(t *testing.T) (string, dynamic.Interface) {
	t.Helper()
	cp, cfg := e2e.StartTestControlPlane(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	admin, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	root, err := e2e.Root()
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(root, "manifests", "crd", "*.yaml"))
	if err != nil || len(files) != 2 {
		t.Fatalf("CRD files %q (%v), want 2", files, err)
	}
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, f := range files {
		var o map[string]any
		if err := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(mustRead(t, f)), 4096).Decode(&o); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if _, err := admin.Resource(crds).Create(ctx, &unstructured.Unstructured{Object: o}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	for _, gvr := range []schema.GroupVersionResource{v1alpha1.PolicyResource(), v1alpha1.ExceptionResource()} {
		for {
			if _, err := admin.Resource(gvr).List(ctx, metav1.ListOptions{}); err == nil {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%s not served: %v", gvr.Resource, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return cp.Kubeconfig, admin
}

// informerGoroutines are the stacks of the goroutines running client-go
// informers: their reflectors, processors and event handlers.
func informerGoroutines() []string {
	var out []string
	for _, g := range strings.Split(goroutines(), "\n\n") {
		if strings.Contains(g, "k8s.io/client-go/tools/cache.") {
			out = append(out, g)
		}
	}
	return out
}

// TestInCluster runs a scan and the server against one API server, with
// policies from ClusterBuildPolicies.
func TestInCluster(t *testing.T) {
	kubeconfig, admin := startCluster(t)
	t.Run("scan", func(t *testing.T) { testScan(t, kubeconfig, admin) })
	t.Run("serve", func(t *testing.T) { testRunStopsInformers(t, kubeconfig, admin) })
}

// testScan: a scan judges the cluster's workloads against its policies,
// writes nothing to them, and leaves no informer running once closed.
func testScan(t *testing.T, kubeconfig string, admin dynamic.Interface) {
	ns := schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	pods := schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	for _, o := range []struct {
		gvr schema.GroupVersionResource
		ns  string
		obj map[string]any
	}{
		{ns, "", map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "shop"}}},
		{pods, "shop", map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": "tool"},
			"spec": map[string]any{"containers": []any{map[string]any{"name": "tool", "image": "evil.example/tool:1"}}}}},
		{v1alpha1.PolicyResource(), "", map[string]any{"apiVersion": v1alpha1.APIVersion, "kind": v1alpha1.KindClusterBuildPolicy,
			"metadata": map[string]any{"name": "registries"},
			"spec":     map[string]any{"registries": map[string]any{"allow": []any{"registry.example/acme/*"}}}}},
	} {
		if _, err := admin.Resource(o.gvr).Namespace(o.ns).Create(t.Context(), &unstructured.Unstructured{Object: o.obj}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	o := ScanOptions{Kubeconfig: kubeconfig, PolicySource: SourceCRD, Namespaces: []string{"shop"}, Concurrency: 2,
		Registry:   Registry{Timeout: 5 * time.Second, TagTTL: time.Minute, MaxImages: 100, PerRegistry: 4},
		Provenance: Provenance{NegativeTTL: time.Minute, MaterialTTL: time.Minute, Concurrency: 4}}
	var logs syncbuffer.Buffer
	s, err := NewScan(t.Context(), o, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Run(t.Context(), nil)
	if err != nil {
		t.Fatalf("Run = %v; log:\n%s", err, logs.String())
	}
	if r.Totals.Workloads != 1 || r.Totals.WouldDeny != 1 || len(r.Workloads) != 1 || !slices.Equal(r.Workloads[0].DenyRules, []string{"unapproved-registry"}) {
		t.Errorf("scan totals %+v, workloads %+v; want shop/tool denied by unapproved-registry", r.Totals, r.Workloads)
	}
	if s.Recorded() {
		t.Errorf("Recorded() = true without a store")
	}
	if _, written, err := s.WriteReports(t.Context(), r); written || err != nil {
		t.Errorf("WriteReports = %v, %v; want nothing written when none are asked for", written, err)
	}
	s.Close()
	if g := informerGoroutines(); len(g) > 0 {
		t.Errorf("%d informer goroutines left after Close:\n%s", len(g), strings.Join(g, "\n\n"))
	}
	u, err := admin.Resource(v1alpha1.PolicyResource()).Get(t.Context(), "registries", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st, ok := u.Object["status"]; ok {
		t.Errorf("the scan wrote the policy's status: %v", st)
	}
}

// testRunStopsInformers: Run waits for the informers it started (the
// policy source's and the namespaces') to stop, with the event handler
// they were calling: none of their goroutines is left when it returns.
// The handler is held in progress at the end by a policy whose key file
// is a FIFO, which blocks its trust check until the test writes the key.
func testRunStopsInformers(t *testing.T, kubeconfig string, admin dynamic.Interface) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key.pub")
	if err := syscall.Mkfifo(keyFile, 0o600); err != nil {
		t.Fatal(err)
	}
	policy := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.APIVersion, "kind": v1alpha1.KindClusterBuildPolicy,
		"metadata": map[string]any{"name": "default"},
		"spec": map[string]any{"mode": "audit",
			"signatures": map[string]any{"keys": []any{keyFile}, "ignoreTlog": true}},
	}}
	if _, err := admin.Resource(v1alpha1.PolicyResource()).Create(t.Context(), policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if g := informerGoroutines(); len(g) > 0 {
		t.Fatalf("informers run before the test:\n%s", strings.Join(g, "\n\n"))
	}

	files, err := selfsigned.Write(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	o := valid()
	o.Listen, o.Kubeconfig = freeAddr(t), kubeconfig
	o.TLS = TLSOptions{CertFile: files.Cert, KeyFile: files.Key}
	o.Policy.Source, o.Policy.File = SourceCRD, ""
	a, logs := newApp(t, o)
	cancel, done := startRun(t, a)

	// Ready once both informers have synced, while the handler of the
	// policy's event reads the FIFO.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(mustRead(t, files.CA))
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer client.CloseIdleConnections()
	eventually(t, "ready, with the policy's event handler in progress", logs, func() error {
		resp, err := client.Get("https://" + o.Listen + "/readyz")
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %s %s", resp.Status, b)
		}
		if !strings.Contains(goroutines(), "policysource.(*CRD).policyChanged") {
			return errors.New("no goroutine in the policy's event handler")
		}
		return nil
	})

	cancel()
	select {
	case err := <-done:
		done <- err
		t.Errorf("Run returned while the policy's event handler was still running")
	case <-time.After(time.Second):
	}
	writeKey(t, keyFile)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil after its context ended", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("Run did not return within 30s of its context's end; log:\n%s", logs.String())
	}
	if g := informerGoroutines(); len(g) > 0 {
		t.Errorf("%d informer goroutines left after Run returned:\n%s", len(g), strings.Join(g, "\n\n"))
	}
}

// writeKey writes a public key into the FIFO path, once its reader has
// opened it.
func writeKey(t *testing.T, path string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pem.Encode(f, &pem.Block{Type: "PUBLIC KEY", Bytes: der}); err != nil {
		t.Fatal(err)
	}
}

// eventually calls f until it returns nil, for at most 30s.
func eventually(t *testing.T, what string, logs *syncbuffer.Buffer, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s: %v; log:\n%s", what, err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
