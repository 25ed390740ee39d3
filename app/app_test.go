package app

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"buildguard.dev/buildguard/internal/syncbuffer"

	certtls "github.com/cert-manager/cert-manager/pkg/server/tls"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/internal/selfsigned"
	"buildguard.dev/buildguard/internal/testregistry"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// serverOptions are a server without a cluster, with a policy file that
// allows reg's acme/ images, a SQLite store, the review UI with a token
// file, and an exceptions file, on loopback.
func serverOptions(t *testing.T, reg *testregistry.Registry) (Options, selfsigned.Files) {
	t.Helper()
	dir := t.TempDir()
	files, err := selfsigned.Write(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte("apiVersion: buildguard.dev/v1alpha1\nkind: Policy\nregistries:\n  allow: [\""+reg.Host+"/acme/*\"]\n  insecure: [\"127.0.0.1:*\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte("0123456789abcdef0123,alice,1001\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := valid()
	o.Listen = freeAddr(t)
	o.TLS = TLSOptions{CertFile: files.Cert, KeyFile: files.Key}
	o.Policy.File, o.Policy.ExceptionsFile = pol, filepath.Join(dir, "exceptions.yaml")
	o.Store.SQLite = filepath.Join(dir, "evidence.db")
	o.Records.Queue, o.Records.Retention = 16, time.Hour
	o.Review.Listen, o.Review.TokenFile = freeAddr(t), tokens
	o.Registry.Timeout = 5 * time.Second
	return o, files
}

func admissionReview(t *testing.T, uid, image string) []byte {
	t.Helper()
	pod, err := json.Marshal(&corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: image}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: types.UID("0d2d9bd5-" + uid), Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Namespace: "shop", Name: "web", Operation: admissionv1.Create, Object: k8sruntime.RawExtension{Raw: pod}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRunStops: Run serves the webhook and the review UI, and returns
// only once both have stopped listening and the decision records queued
// in memory are in the store.
func TestRunStops(t *testing.T) {
	reg := testregistry.New(t)
	reg.Push(t, "acme/web:1", testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-72 * time.Hour)}))
	o, files := serverOptions(t, reg)
	a, logs := newApp(t, o)
	cancel, done := startRun(t, a)

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(mustRead(t, files.CA))
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	deadline := time.Now().Add(30 * time.Second)
	for _, u := range []string{"https://" + o.Listen + "/readyz", "https://" + o.Review.Listen + "/"} {
		for {
			resp, err := client.Get(u)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode < 500 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET %s: %v; log:\n%s", u, err, logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// An allow is queued, not written before the answer.
	resp, err := client.Post("https://"+o.Listen+"/validate?timeout=10s", "application/json",
		bytes.NewReader(admissionReview(t, "allow", reg.Host+"/acme/web:1")))
	if err != nil {
		t.Fatal(err)
	}
	var out admissionv1.AdmissionReview
	err = json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if err != nil || out.Response == nil || !out.Response.Allowed {
		t.Fatalf("the review of a clean image: %+v, %v; want allowed", out.Response, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil after its context ended", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("Run did not return within 30s of its context's end; log:\n%s", logs.String())
	}
	notListening(t, o.Listen, o.Review.Listen)
	st, err := evidence.OpenSQLite(t.Context(), o.Store.SQLite)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if d, err := st.Decision(t.Context(), "0d2d9bd5-allow"); err != nil || d.Verdict != "allow" {
		t.Errorf("the allowed admission's record after Run returned: %+v, %v; want it stored", d, err)
	}
}

// TestRunEndsWithWebhook: when the webhook's server stops on its own
// (here: its certificate is gone), Run stops everything else, the
// review UI included, and returns the webhook's error.
func TestRunEndsWithWebhook(t *testing.T) {
	reg := testregistry.New(t)
	o, files := serverOptions(t, reg)
	a, logs := newApp(t, o)
	if err := os.Remove(files.Cert); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(t.Context()) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "--tls-cert-file") {
			t.Errorf("Run = %v, want the webhook's error about --tls-cert-file", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("Run did not return within 30s of the webhook's failure; log:\n%s", logs.String())
	}
	notListening(t, o.Listen, o.Review.Listen)
}

// TestNewFails: New refuses what it cannot build before anything runs,
// and releases what it had opened.
func TestNewFails(t *testing.T) {
	reg := testregistry.New(t)
	for _, tc := range []struct {
		name string
		mod  func(t *testing.T, o *Options)
		want string
	}{
		{"invalid options", func(_ *testing.T, o *Options) { o.Review.TokenFile = "" }, "--review-listen without a cluster needs --review-token-file"},
		{"webhook address taken", func(t *testing.T, o *Options) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			o.Listen = ln.Addr().String()
		}, "address already in use"},
		{"bad exceptions file", func(t *testing.T, o *Options) {
			if err := os.WriteFile(o.Policy.ExceptionsFile, []byte("kind: Policy\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "exceptions file"},
		{"short session key", func(t *testing.T, o *Options) { o.Review.SessionKeyFile = o.Review.TokenFile }, "want at least 32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, _ := serverOptions(t, reg)
			tc.mod(t, &o)
			before := runtime.NumGoroutine()
			a, err := New(t.Context(), o, slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), tc.want) || a != nil {
				t.Fatalf("New = %v, %v; want an error with %q", a, err, tc.want)
			}
			var oe *OptionError
			if errors.As(err, &oe) != (tc.name == "invalid options") {
				t.Errorf("New = %T, an *OptionError only for invalid options", err)
			}
			// The review UI's address was opened before the webhook's.
			ln, err := net.Listen("tcp", o.Review.Listen)
			if err != nil {
				t.Fatalf("the review UI's address is still taken after New failed: %v", err)
			}
			ln.Close()
			// Nothing New started goes on: the store and the recorder
			// it opened are closed, and with invalid options nothing
			// was opened at all.
			if tc.name == "invalid options" {
				if _, err := os.Stat(o.Store.SQLite); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("New with invalid options created the store %s: %v", o.Store.SQLite, err)
				}
			}
			if n := settledGoroutines(before); n > before {
				t.Errorf("%d goroutines after New failed, %d before:\n%s", n, before, goroutines())
			}
		})
	}
}

// settledGoroutines waits up to 5s for the goroutines to number at most
// want, and returns how many there are.
func settledGoroutines(want int) int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func goroutines() string {
	b := make([]byte, 1<<20)
	return string(b[:runtime.Stack(b, true)])
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// prunedStore tells of each Prune once it is done.
type prunedStore struct {
	evidence.Store
	pruned chan time.Time // the cut-off
}

func (s prunedStore) Prune(ctx context.Context, before time.Time, maxRows int) (int, error) {
	defer func() { s.pruned <- before }()
	return s.Store.Prune(ctx, before, maxRows)
}

// TestPrune: retention is applied at once, then every pruneInterval on
// the App's clock, to what is older than Retention by that clock.
func TestPrune(t *testing.T) {
	st, err := evidence.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "evidence.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	t0 := time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)
	for id, at := range map[string]time.Time{"old": t0.Add(-90 * time.Minute), "newer": t0.Add(-30 * time.Minute)} {
		if err := st.AddDecision(t.Context(), evidence.Decision{ID: id, Time: at, Operation: "CREATE", Namespace: "shop", Kind: "Pod", Name: id, Verdict: "allow"}); err != nil {
			t.Fatal(err)
		}
	}
	store := prunedStore{st, make(chan time.Time, 4)}
	clk := clocktest.New(t0)
	a := &App{opts: Options{Records: RecordsOptions{Retention: time.Hour}}, log: slog.New(slog.DiscardHandler), store: store, clock: clk}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.prune(ctx) }()
	wait, cancelWait := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancelWait()
	kept := func(id string) bool {
		_, err := st.Decision(t.Context(), id)
		if err != nil && !errors.Is(err, evidence.ErrNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}
	for i, step := range []struct {
		advance    time.Duration
		cut        time.Time
		old, newer bool // kept
	}{
		{0, t0.Add(-time.Hour), false, true},
		{pruneInterval, t0, false, false},
	} {
		clk.Advance(step.advance)
		select {
		case cut := <-store.pruned:
			if !cut.Equal(step.cut) {
				t.Errorf("prune %d: cut-off %v, want %v", i+1, cut, step.cut)
			}
		case <-wait.Done():
			t.Fatalf("prune %d: not run", i+1)
		}
		if old, newer := kept("old"), kept("newer"); old != step.old || newer != step.newer {
			t.Errorf("after prune %d: old kept %v, newer kept %v; want %v, %v", i+1, old, newer, step.old, step.newer)
		}
		if i == 0 {
			if err := clk.BlockUntil(wait, 1); err != nil {
				t.Fatalf("no ticker on the clock: %v", err)
			}
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("prune = %v, want nil", err)
	}
	if n := clk.Waiting(); n != 0 {
		t.Errorf("%d tickers left after prune returned, want 0", n)
	}
}

// TestCertificateRotated: the webhook and the review UI serve the
// certificate files through one source, which one reader keeps current:
// a rotated certificate is served by both.
func TestCertificateRotated(t *testing.T) {
	reg := testregistry.New(t)
	o, files := serverOptions(t, reg)
	a, logs := newApp(t, o)
	src, ok := a.webhook.Certificates.(*certtls.FileCertificateSource)
	if !ok {
		t.Fatalf("the webhook's certificate source is a %T, want the files'", a.webhook.Certificates)
	}
	src.UpdateInterval = 50 * time.Millisecond // not the 10s of serve
	cancel, done := startRun(t, a)
	defer func() {
		cancel()
		<-done
	}()

	rotated, err := selfsigned.Write(t.TempDir(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []selfsigned.Files{files, rotated} {
		if i > 0 {
			// In place, as cert-manager rotates them.
			for _, p := range [][2]string{{rotated.Cert, files.Cert}, {rotated.Key, files.Key}} {
				if err := os.WriteFile(p[1], mustRead(t, p[0]), 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
		pair, err := tls.LoadX509KeyPair(want.Cert, want.Key)
		if err != nil {
			t.Fatal(err)
		}
		for _, addr := range []string{o.Listen, o.Review.Listen} {
			deadline := time.Now().Add(10 * time.Second)
			for {
				got, err := servedCertificate(addr)
				if err == nil && bytes.Equal(got, pair.Certificate[0]) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s does not serve %s within 10s (%v); log:\n%s", addr, want.Cert, err, logs.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	if n := strings.Count(goroutines(), "(*FileCertificateSource).Start("); n != 1 {
		t.Errorf("%d goroutines read the certificate files, want 1:\n%s", n, goroutines())
	}
}

// servedCertificate is the DER of the certificate addr serves.
func servedCertificate(addr string) ([]byte, error) {
	// Not verified: the test compares it with the one it wrote.
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Raw, nil
}

// notListening fails t for each of addrs that still accepts connections
// after Run returned.
func notListening(t *testing.T, addrs ...string) {
	t.Helper()
	for _, addr := range addrs {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after Run returned", addr)
		}
	}
}

// newApp returns the App of o, logging as text into the buffer it also
// returns.
// startRun runs a.Run until cancel is called or the test ends; done
// receives what Run returns.
func startRun(t *testing.T, a *App) (cancel context.CancelFunc, done chan error) {
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	ch := make(chan error, 1)
	go func() { ch <- a.Run(ctx) }()
	return cancel, ch
}

func newApp(t *testing.T, o Options) (*App, *syncbuffer.Buffer) {
	t.Helper()
	logs := new(syncbuffer.Buffer)
	a, err := New(t.Context(), o, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return a, logs
}
