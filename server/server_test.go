package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	certtls "github.com/cert-manager/cert-manager/pkg/server/tls"
	"github.com/prometheus/client_golang/prometheus"

	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/internal/selfsigned"
	"buildguard.dev/buildguard/server"
)

func start(t *testing.T, dir string, files selfsigned.Files, reg prometheus.Registerer) (addr string, stop func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	s := &server.Server{
		Listener: ln, CertFile: files.Cert, KeyFile: files.Key, ReloadInterval: 50 * time.Millisecond,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") }),
		Metrics: reg,
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	return ln.Addr().String(), func() error { cancel(); return <-done }
}

func client(caPEM []byte) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"},
		DisableKeepAlives: true,
	}}
}

func get(t *testing.T, c *http.Client, url string) (int, string, *x509.Certificate) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.TLS.PeerCertificates[0]
}

func TestServeAndReload(t *testing.T) {
	dir := t.TempDir()
	files, err := selfsigned.Write(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	addr, stop := start(t, dir, files, reg)
	c := client(files.CAPEM)
	expiry := func() float64 {
		mfs, err := reg.Gather()
		if err != nil || len(mfs) != 1 || mfs[0].GetName() != "buildguard_tls_certificate_expiry_timestamp_seconds" {
			t.Fatalf("gathered %v (%v), want buildguard_tls_certificate_expiry_timestamp_seconds", mfs, err)
		}
		return mfs[0].GetMetric()[0].GetGauge().GetValue()
	}
	for path, want := range map[string]string{"/healthz": "ok\n", "/readyz": "ok\n", "/validate": "hello"} {
		if code, body, _ := get(t, c, "https://"+addr+path); code != 200 || body != want {
			t.Errorf("GET %s = %d %q, want 200 %q", path, code, body, want)
		}
	}
	_, _, first := get(t, c, "https://"+addr+"/healthz")
	if got, want := expiry(), float64(first.NotAfter.Unix()); got != want {
		t.Errorf("certificate expiry metric %v, want %v (NotAfter of the certificate served)", got, want)
	}

	// Rotate, as cert-manager does: a new CA and certificate in place.
	dir2 := t.TempDir()
	rotated, err := selfsigned.Write(dir2, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range [][2]string{{rotated.Cert, files.Cert}, {rotated.Key, files.Key}} {
		b, err := os.ReadFile(p[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c2 := client(rotated.CAPEM)
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := c2.Get("https://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.TLS.PeerCertificates[0].SerialNumber.Cmp(first.SerialNumber) != 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rotated certificate was not served within 5s (last error %v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	rotatedCert, err := tls.LoadX509KeyPair(rotated.Cert, rotated.Key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(rotatedCert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if got, want := expiry(), float64(leaf.NotAfter.Unix()); got != want {
		t.Errorf("certificate expiry metric after rotation %v, want %v", got, want)
	}
	if err := stop(); err != nil {
		t.Errorf("Run returned %v after cancel, want nil", err)
	}
}

func TestCheckFiles(t *testing.T) {
	dir := t.TempDir()
	files, err := selfsigned.Write(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.pem")
	os.WriteFile(garbage, []byte("not a pem"), 0o600)
	tests := []struct {
		name, cert, key, want string
	}{
		{"no cert flag", "", files.Key, "--tls-cert-file is required"},
		{"missing cert", filepath.Join(dir, "nope.crt"), files.Key, "--tls-cert-file: stat"},
		{"missing key", files.Cert, filepath.Join(dir, "nope.key"), "--tls-private-key-file: stat"},
		{"garbage key", files.Cert, garbage, "TLS certificate"},
		{"key of another cert", files.CA, files.Key, "TLS certificate"},
	}
	for _, tt := range tests {
		if err := server.CheckFiles(tt.cert, tt.key); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("CheckFiles(%s) = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
	if err := server.CheckFiles(files.Cert, files.Key); err != nil {
		t.Errorf("CheckFiles(valid) = %v", err)
	}
}

// TestDrain: once its context ends, the server answers requests and
// fails /readyz for DrainDelay on its clock, and only then stops
// listening. Before the drain it stopped at once, and requests the
// endpoints still sent it failed.
func TestDrain(t *testing.T) {
	files, ln := certAndListener(t)
	const delay = 2 * time.Second
	clk := clocktest.New(time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC))
	ctx, cancel := context.WithCancel(t.Context())
	s := &server.Server{Listener: ln, CertFile: files.Cert, KeyFile: files.Key, DrainDelay: delay, Clock: clk,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	c := client(files.CAPEM)
	addr := "https://" + ln.Addr().String()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := c.Get(addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready within 10s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	cancel()
	wait, cancelWait := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancelWait()
	if err := clk.BlockUntil(wait, 1); err != nil {
		select {
		case err := <-done:
			t.Fatalf("Run returned %v without a drain", err)
		default:
			t.Fatalf("no drain began on the clock: %v", err)
		}
	}
	// Within the delay: admissions answered, readiness failing.
	var moved time.Duration
	for _, advance := range []time.Duration{0, delay / 2, delay/2 - time.Nanosecond} {
		clk.Advance(advance)
		moved += advance
		if code, body, _ := get(t, c, addr+"/validate"); code != 200 || body != "hello" {
			t.Fatalf("%v into the drain: /validate = %d %q, want 200 hello", moved, code, body)
		}
		if code, body, _ := get(t, c, addr+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "shutting down") {
			t.Fatalf("%v into the drain: /readyz = %d %q, want 503 shutting down", moved, code, body)
		}
		select {
		case err := <-done:
			t.Fatalf("Run returned %v %v into the drain, before the drain delay %s", err, moved, delay)
		default:
		}
	}
	clk.Advance(time.Nanosecond)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v after the drain, want nil", err)
		}
	case <-wait.Done():
		t.Fatalf("Run did not return once the clock passed the drain delay %s", delay)
	}
	if _, err := c.Get(addr + "/validate"); err == nil {
		t.Errorf("still serving after the drain")
	}
}

// TestDrainClosesKeptConnections: the API server calls webhooks over
// HTTP/1.1 and reuses idle connections, each to the pod it was opened to
// whatever the endpoints say now. Draining, the server answers requests on
// a kept connection (closing it under the client would fail the request
// it is sending: a POST is not retried) with Connection: close, so that
// the client's next request opens a new connection, to a pod still in
// the endpoints. A pod force-deleted is killed 2s after SIGTERM, within
// its drain: it then has few connections left to cut.
func TestDrainClosesKeptConnections(t *testing.T) {
	files, ln := certAndListener(t)
	const delay = 5 * time.Second
	clk := clocktest.New(time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	s := &server.Server{Listener: ln, CertFile: files.Cert, KeyFile: files.Key, DrainDelay: delay, Clock: clk,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })}
	var runErr error
	stopped := make(chan struct{})
	go func() { runErr = s.Run(ctx); close(stopped) }()
	wait, cancelWait := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancelWait()
	defer func() {
		cancel()
		if clk.BlockUntil(wait, 1) == nil {
			clk.Advance(delay) // the drain ends
		}
		<-stopped
	}()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(files.CAPEM)
	// As the API server's webhook client: HTTP/1.1, connections kept.
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"http/1.1"}}}}
	url := "https://" + ln.Addr().String() + "/validate"
	// post returns whether the request went over a connection used
	// before, and whether the answer closes it.
	post := func() (reused, closes bool) {
		t.Helper()
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
		}), http.MethodPost, url, strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("POST: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return reused, resp.Close
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := c.Get("https://" + ln.Addr().String() + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready within 10s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if reused, closes := post(); !reused || closes {
		t.Fatalf("before the drain: connection reused %v, closed by the answer %v; want kept", reused, closes)
	}
	cancel()
	if err := clk.BlockUntil(wait, 1); err != nil {
		select {
		case <-stopped:
			t.Fatalf("Run returned %v without a drain", runErr)
		default:
			t.Fatalf("no drain began on the clock: %v", err)
		}
	}
	if reused, closes := post(); !reused || !closes {
		t.Errorf("draining, on the connection kept from before: reused %v (want true: not closed under the client), answer closes it %v (want true)", reused, closes)
	}
	if reused, _ := post(); reused {
		t.Error("draining, a request went over a connection kept from before: a pod killed now would fail it")
	}
}

// endedSource is a certificate file source that says when its Start has
// returned.
type endedSource struct {
	*certtls.FileCertificateSource
	ended chan struct{}
}

func (s *endedSource) Start(ctx context.Context) error {
	defer close(s.ended)
	return s.FileCertificateSource.Start(ctx)
}

// TestSourceOutlivesDrain: the certificate source runs through the drain
// and has stopped when Run returns. A source that stopped with the
// context would race its end: taken for the source's failure, it skipped
// the drain.
func TestSourceOutlivesDrain(t *testing.T) {
	files, ln := certAndListener(t)
	src := &endedSource{&certtls.FileCertificateSource{CertPath: files.Cert, KeyPath: files.Key, UpdateInterval: 50 * time.Millisecond}, make(chan struct{})}
	s := &server.Server{Listener: ln, Certificates: src, DrainDelay: time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	c := client(files.CAPEM)
	readyz := "https://" + ln.Addr().String() + "/readyz"
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := c.Get(readyz)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready within 10s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	cancel()
	select {
	case <-src.ended:
		t.Errorf("the certificate source stopped with the context, before the drain")
	case <-time.After(300 * time.Millisecond):
	}
	if code, body, _ := get(t, c, readyz); code != http.StatusServiceUnavailable || !strings.Contains(body, "shutting down") {
		t.Errorf("GET /readyz while draining = %d %q, want 503 shutting down", code, body)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of its context's end")
	}
	select {
	case <-src.ended:
	default:
		t.Error("the certificate source still runs after Run returned")
	}
}

// certAndListener returns a certificate for 127.0.0.1 and a loopback
// listener for a server under test.
func certAndListener(t *testing.T) (selfsigned.Files, net.Listener) {
	t.Helper()
	files, err := selfsigned.Write(t.TempDir(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return files, ln
}
