package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"buildguard.dev/buildguard/internal/selfsigned"
	"buildguard.dev/buildguard/internal/testregistry"
)

// admission is one AdmissionReview sent, and how it went.
type admission struct {
	start, end time.Time
	err        error // transport error, bad status or bad answer
}

// admissionReview is a Pod creation running image.
func admissionReview(uid, image string) []byte {
	pod := corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "p-" + uid, Namespace: "shop"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}},
	}
	raw, _ := json.Marshal(pod)
	b, _ := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: types.UID(uid), Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: "shop", Name: pod.Name, Operation: admissionv1.Create,
			Object: runtime.RawExtension{Raw: raw},
		},
	})
	return b
}

// send posts one review and checks the answer: 200, the request's UID,
// and the verdict the policy gives the image.
func send(c *http.Client, url, uid, image string, allowed bool) error {
	resp, err := c.Post(url, "application/json", bytes.NewReader(admissionReview(uid, image)))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	var got admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &got); err != nil || got.Response == nil {
		return fmt.Errorf("answer %s: %v", body, err)
	}
	if string(got.Response.UID) != uid || got.Response.Allowed != allowed {
		return fmt.Errorf("answer for %s: uid %s allowed %v, want allowed %v", uid, got.Response.UID, got.Response.Allowed, allowed)
	}
	return nil
}

// TestDrainUnderLoad streams admissions at the real `buildguard serve`
// over HTTPS, with keep-alive connections as the API server uses, from
// two goroutines, and sends it SIGTERM: with --drain-delay every request
// sent before the delay is over is answered as the policy says, /readyz
// fails meanwhile, and the process exits 0 after it. Without a delay
// (what serve did before) requests sent after SIGTERM fail: the
// endpoints would still be sending them.
func TestDrainUnderLoad(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	reg, err := StartRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	oldImg, freshImg := reg.Host+"/e2e/old:1", reg.Host+"/e2e/fresh:1"
	if _, err := reg.Push("e2e/old:1", testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-48 * time.Hour)})); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Push("e2e/fresh:1", testregistry.Build(t, testregistry.Image{Created: time.Now()})); err != nil {
		t.Fatal(err)
	}
	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, fmt.Appendf(nil, `apiVersion: buildguard.dev/v1alpha1
kind: Policy
mode: enforce
registries:
  allow: [%q]
freshness:
  minAge: 10m
`, reg.Host+"/e2e/*"), 0o644); err != nil {
		t.Fatal(err)
	}
	tlsDir := filepath.Join(dir, "tls")
	if err := os.Mkdir(tlsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	tlsFiles, err := selfsigned.Write(tlsDir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	// Not under the test's 5 minutes: on a busy machine the build alone
	// can take most of them, and the deadline is for the drain.
	bin, err := BuildBuildguard(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(tlsFiles.CAPEM)

	for _, tc := range []struct {
		drain time.Duration
		// want says whether every request sent in the first `window`
		// after SIGTERM must be answered (with a drain) or some must fail
		// (without one).
		window   time.Duration
		answered bool
	}{
		{drain: 3 * time.Second, window: 2500 * time.Millisecond, answered: true},
		{drain: 0, window: time.Second, answered: false},
	} {
		t.Run(fmt.Sprintf("drain-delay=%s", tc.drain), func(t *testing.T) {
			port, err := FreePort()
			if err != nil {
				t.Fatal(err)
			}
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			p, err := Start("buildguard", filepath.Join(dir, fmt.Sprintf("buildguard-%s.log", tc.drain)), []string{"SSL_CERT_FILE=" + reg.CAFile}, bin,
				"serve", "--config="+policy, "--listen="+addr, "--tls-cert-file="+tlsFiles.Cert, "--tls-private-key-file="+tlsFiles.Key,
				"--timeout=4s", "--log-format=text", fmt.Sprintf("--drain-delay=%s", tc.drain))
			if err != nil {
				t.Fatal(err)
			}
			defer p.Stop()
			defer func() {
				if t.Failed() {
					t.Logf("--- buildguard log tail:\n%s", p.Tail(4000))
				}
			}()
			client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: 4,
			}}
			if err := waitHTTP(ctx, client, "https://"+addr+"/readyz", "", p, 60*time.Second); err != nil {
				t.Fatal(err)
			}
			url := "https://" + addr + "/validate"
			// Warm the image cache: the stream measures serving, not the
			// first registry lookups.
			for _, img := range []string{oldImg, freshImg} {
				if err := send(client, url, "warm-"+filepath.Base(img), img, img == oldImg); err != nil {
					t.Fatal(err)
				}
			}

			var mu sync.Mutex
			var sent []admission
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for g := range 2 {
				wg.Go(func() {
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						img, allowed := oldImg, true
						if i%2 == 1 {
							img, allowed = freshImg, false
						}
						a := admission{start: time.Now()}
						a.err = send(client, url, fmt.Sprintf("g%d-%d", g, i), img, allowed)
						a.end = time.Now()
						mu.Lock()
						sent = append(sent, a)
						mu.Unlock()
						if a.err != nil {
							time.Sleep(20 * time.Millisecond) // refused: do not spin
						}
					}
				})
			}
			time.Sleep(500 * time.Millisecond)
			term := time.Now()
			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			exitedc := make(chan time.Duration, 1)
			go func() {
				<-p.done
				exitedc <- time.Since(term)
			}()
			// Readiness during the drain, once the signal had time to
			// arrive.
			var readyDuring []int
			time.Sleep(300 * time.Millisecond)
			for time.Since(term) < tc.window {
				if resp, err := client.Get("https://" + addr + "/readyz"); err == nil {
					readyDuring = append(readyDuring, resp.StatusCode)
					resp.Body.Close()
				}
				time.Sleep(100 * time.Millisecond)
			}
			var exited time.Duration
			select {
			case exited = <-exitedc:
			case <-time.After(tc.drain + 30*time.Second):
				t.Fatal("buildguard did not exit after the drain")
			}
			close(stop)
			wg.Wait()

			var before, during, failedBefore, failedDuring int
			var firstErr error
			for _, a := range sent {
				switch {
				case a.start.Before(term):
					before++
					if a.err != nil {
						failedBefore++
						firstErr = a.err
					}
				case a.start.Sub(term) < tc.window:
					during++
					if a.err != nil {
						failedDuring++
						if firstErr == nil {
							firstErr = a.err
						}
					}
				}
			}
			t.Logf("drain %s: %d admissions before SIGTERM (%d failed), %d in the %s after it (%d failed); /readyz during: %v; exited after %s (%v)",
				tc.drain, before, failedBefore, during, tc.window, failedDuring, readyDuring, exited.Round(10*time.Millisecond), p.err)
			if before == 0 || during == 0 {
				t.Fatalf("the stream sent %d admissions before SIGTERM and %d after: too few to tell", before, during)
			}
			if !tc.answered {
				if failedDuring == 0 {
					t.Errorf("without a drain, all %d admissions sent after SIGTERM were answered: the test cannot tell a drain from none", during)
				}
				return
			}
			if failedBefore+failedDuring != 0 {
				t.Errorf("%d admissions sent before SIGTERM and %d of %d sent during the drain failed: %v", failedBefore, failedDuring, during, firstErr)
			}
			if len(readyDuring) == 0 {
				t.Errorf("/readyz did not answer during the drain")
			}
			for _, code := range readyDuring {
				if code != http.StatusServiceUnavailable {
					t.Errorf("/readyz during the drain: %v, want only 503", readyDuring)
					break
				}
			}
			if p.err != nil {
				t.Errorf("buildguard exited with %v after the drain, want 0", p.err)
			}
			if exited < tc.drain {
				t.Errorf("buildguard exited %s after SIGTERM, before the drain delay %s", exited, tc.drain)
			}
		})
	}
}
