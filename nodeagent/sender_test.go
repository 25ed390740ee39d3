package nodeagent

import (
	"context"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"buildguard.dev/buildguard/internal/selfsigned"
)

// reportServer is buildguard's report endpoint as the sender sees it: it
// answers with the statuses it is given in turn, then 200.
type reportServer struct {
	mu       sync.Mutex
	statuses []int
	bodies   []string
	tokens   []string
	got      chan struct{}
}

func (rs *reportServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rs.mu.Lock()
	code := http.StatusOK
	if len(rs.statuses) > 0 {
		code, rs.statuses = rs.statuses[0], rs.statuses[1:]
	}
	rs.tokens = append(rs.tokens, r.Header.Get("Authorization"))
	if code == http.StatusOK {
		rs.bodies = append(rs.bodies, string(body))
	}
	rs.mu.Unlock()
	defer func() { rs.got <- struct{}{} }()
	if code == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	if code != http.StatusOK {
		http.Error(w, "no", code)
		return
	}
	io.WriteString(w, `{"node":"n","accepted":{"builds":1,"connections":2},"duplicates":0,"ignored":0}`)
}

// startSender runs a sender against a TLS test server whose CA it trusts
// through a CA file, as the command line sets it up.
func startSender(t *testing.T, rs *reportServer, batches ...string) (*Sender, *Spool, string) {
	t.Helper()
	srv := httptest.NewTLSServer(rs)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	client, err := NewHTTPClient(caFile)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := NewMetrics()
	spool, err := OpenSpool(filepath.Join(dir, "buffer"), 0, m.BufferDropped)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range batches {
		spool.Put([]byte(b))
	}
	s := &Sender{URL: srv.URL + "/v1/node-reports", TokenFile: tokenFile, Client: client, Spool: spool, Metrics: m,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	return s, spool, tokenFile
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSenderOutcomes(t *testing.T) {
	tests := []struct {
		name         string
		statuses     []int
		wantBodies   []string
		wantRejected float64
		wantErrors   map[string]float64
	}{
		{"accepted", nil, []string{"a", "b"}, 0, nil},
		{"5xx and 429 are retried in order", []int{503, 429, 500}, []string{"a", "b"}, 0, map[string]float64{"503": 1, "429": 1, "500": 1}},
		{"401 is retried: the token may be rotated", []int{401}, []string{"a", "b"}, 0, map[string]float64{"401": 1}},
		{"a 400 drops that batch only", []int{400}, []string{"b"}, 1, map[string]float64{"400": 1}},
		{"413 too", []int{413}, []string{"b"}, 1, map[string]float64{"413": 1}},
		// About the endpoint, not the batch: dropping would empty the
		// buffer into the void while --server is wrong.
		{"404 and 405 are retried", []int{404, 405}, []string{"a", "b"}, 0, map[string]float64{"404": 1, "405": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := &reportServer{statuses: tt.statuses, got: make(chan struct{}, 100)}
			s, spool, _ := startSender(t, rs, "a", "b")
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan struct{})
			go func() { s.Run(ctx); close(done) }()
			waitFor(t, "buffer drained", func() bool { n, _ := spool.Len(); return n == 0 })
			cancel()
			<-done
			rs.mu.Lock()
			defer rs.mu.Unlock()
			if strings.Join(rs.bodies, ",") != strings.Join(tt.wantBodies, ",") {
				t.Errorf("server stored %v, want %v", rs.bodies, tt.wantBodies)
			}
			if got := testutil.ToFloat64(s.Metrics.batchesDropped.WithLabelValues("rejected")); got != tt.wantRejected {
				t.Errorf("rejected batches = %v, want %v", got, tt.wantRejected)
			}
			for code, want := range tt.wantErrors {
				if got := testutil.ToFloat64(s.Metrics.sendErrors.WithLabelValues(code)); got != want {
					t.Errorf("send errors %s = %v, want %v", code, got, want)
				}
			}
			if got := testutil.ToFloat64(s.Metrics.itemsSent.WithLabelValues("connection")); got != float64(2*len(tt.wantBodies)) {
				t.Errorf("connections sent = %v, want %v", got, 2*len(tt.wantBodies))
			}
		})
	}
}

func TestSenderRereadsTheTokenAndWaitsForIt(t *testing.T) {
	rs := &reportServer{got: make(chan struct{}, 100)}
	s, spool, tokenFile := startSender(t, rs, "a")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go s.Run(ctx)
	<-rs.got
	// The kubelet rotates the token: the next send uses the new one.
	if err := os.WriteFile(tokenFile, []byte("token-2"), 0o600); err != nil {
		t.Fatal(err)
	}
	spool.Put([]byte("b"))
	<-rs.got
	// No token (the projected volume is not there yet): the batch waits.
	os.Remove(tokenFile)
	spool.Put([]byte("c"))
	waitFor(t, "a token error", func() bool { return testutil.ToFloat64(s.Metrics.sendErrors.WithLabelValues("token")) > 0 })
	if n, _ := spool.Len(); n != 1 {
		t.Errorf("without a token, %d batches buffered, want 1", n)
	}
	os.WriteFile(tokenFile, []byte("token-3"), 0o600)
	<-rs.got
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if want := "Bearer token-1,Bearer token-2,Bearer token-3"; strings.Join(rs.tokens, ",") != want {
		t.Errorf("tokens sent %v, want %s", rs.tokens, want)
	}
}

func TestSenderKeepsBatchesWhileTheServerIsDown(t *testing.T) {
	rs := &reportServer{got: make(chan struct{}, 100)}
	s, spool, _ := startSender(t, rs)
	s.URL = "https://127.0.0.1:1/v1/node-reports" // nothing listens
	spool.Put([]byte("a"))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	waitFor(t, "network errors", func() bool { return testutil.ToFloat64(s.Metrics.sendErrors.WithLabelValues("network")) >= 2 })
	cancel()
	<-done
	if n, _ := spool.Len(); n != 1 {
		t.Errorf("%d batches buffered after failed sends, want 1", n)
	}
}

func TestRetryAfter(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
	}{{"", 0}, {"3", 3 * time.Second}, {"x", 0}, {"-1", 0}, {"3600", time.Minute}} {
		if got := retryAfter(tt.in, time.Minute); got != tt.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestSenderReadsARotatedCA(t *testing.T) {
	rs := &reportServer{got: make(chan struct{}, 100)}
	s, spool, _ := startSender(t, rs, "a")
	right, err := os.ReadFile(filepath.Join(filepath.Dir(s.TokenFile), "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	// Another server's CA first: the handshake fails and the batch waits.
	other, err := selfsigned.Write(t.TempDir(), "localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	s.CAFile = filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(s.CAFile, other.CAPEM, 0o600)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	waitFor(t, "failed handshakes", func() bool { return testutil.ToFloat64(s.Metrics.sendErrors.WithLabelValues("network")) >= 1 })
	// The CA is rotated in the mounted Secret.
	os.WriteFile(s.CAFile, append(right, '\n'), 0o600)
	waitFor(t, "buffer drained", func() bool { n, _ := spool.Len(); return n == 0 })
	cancel()
	<-done
}

// Without a client or a CA file the sender trusts the system's CAs: a
// server with a certificate they did not sign is a network error, the
// batch stays, and nothing panics.
func TestSenderWithoutClientVerifiesTheServer(t *testing.T) {
	rs := &reportServer{got: make(chan struct{}, 100)}
	s, spool, _ := startSender(t, rs, "a")
	s.Client = nil
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	waitFor(t, "a network error", func() bool { return testutil.ToFloat64(s.Metrics.sendErrors.WithLabelValues("network")) >= 1 })
	cancel()
	<-done
	if n, _ := spool.Len(); n != 1 || len(rs.got) != 0 {
		t.Errorf("%d batches buffered, %d requests reached the server; want 1 and 0", n, len(rs.got))
	}
}
