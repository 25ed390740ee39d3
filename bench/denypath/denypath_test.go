// Package denypath benchmarks the admission path of decisions that are
// recorded: `buildguard serve`'s handler, engine and records.Recorder
// with a SQLite or PostgreSQL store, behind server.Server over HTTPS on
// loopback. docs/benchmarks.md gives the commands,
// docs/benchmark-results.md the figures.
package denypath

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/selfsigned"
	"buildguard.dev/buildguard/internal/testpostgres"
	"buildguard.dev/buildguard/internal/testregistry"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/records"
	"buildguard.dev/buildguard/registry"
	"buildguard.dev/buildguard/server"
	"buildguard.dev/buildguard/webhook"
)

// callers is the number of concurrent reviews: 8 goroutines per CPU on
// the 2-CPU machine of docs/benchmark-results.md.
const callers = 16

// BenchmarkDenyPath sends reviews of a Pod whose image is fresh (denied:
// fresh-image, enforce mode; the record committed to the store first, or
// to the journal first) or old (allowed) from 16 concurrent clients
// and reports the latency of the answers (p50, p99), reviews/s, and for
// the allowed ones, which are recorded without waiting, whether the
// recorder's writer kept up: records still queued when the load stopped
// (backlog), records the admission path had to journal because the queue
// was full (spilled), and how long the writer took to store the backlog.
func BenchmarkDenyPath(b *testing.B) {
	for _, be := range []struct {
		name string
		open func(b *testing.B) evidence.Store
	}{
		{"sqlite", func(b *testing.B) evidence.Store {
			st, err := evidence.OpenSQLite(context.Background(), filepath.Join(b.TempDir(), "evidence.db"))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { st.Close() })
			return st
		}},
		{"postgres", func(b *testing.B) evidence.Store {
			srv := testpostgres.Start(b)
			st, err := evidence.OpenPostgres(context.Background(), srv.NewDatabase(b))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { st.Close() })
			return st
		}},
	} {
		b.Run(be.name, func(b *testing.B) {
			st := be.open(b)
			store, journal := newFixture(b, st, false), newFixture(b, st, true)
			b.Run("store-first/deny", func(b *testing.B) { store.run(b, store.fresh, true) })
			b.Run("journal-first/deny", func(b *testing.B) { journal.run(b, journal.fresh, true) })
			b.Run("allow", func(b *testing.B) { store.run(b, store.old, false) })
		})
	}
}

type fixture struct {
	url        string
	client     *http.Client
	rec        *records.Recorder
	store      evidence.Store
	fresh, old string
	uids       atomic.Int64
}

// newFixture serves the handler with a recorder on st, store first or
// journal first (records.WithJournalFirst).
func newFixture(b *testing.B, st evidence.Store, journalFirst bool) *fixture {
	dir := b.TempDir()
	files, err := selfsigned.Write(dir, "127.0.0.1")
	if err != nil {
		b.Fatal(err)
	}
	reg := testregistry.New(b)
	reg.Push(b, "acme/fresh:1", testregistry.Build(b, testregistry.Image{Created: time.Now().Add(-time.Minute),
		Steps: []string{"COPY app /app # buildkit"}}))
	reg.Push(b, "acme/old:1", testregistry.Build(b, testregistry.Image{Created: time.Now().Add(-30 * 24 * time.Hour),
		Steps: []string{"COPY app /app # buildkit"}}))
	p, err := policy.Parse([]byte("apiVersion: buildguard.dev/v1alpha1\nkind: Policy\nmode: enforce\nregistries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n  insecure: [\"127.0.0.1:*\"]\n"))
	if err != nil {
		b.Fatal(err)
	}
	metrics := webhook.NewMetrics()
	e := &engine.Engine{
		Policies: engine.PolicyFunc(func() *policy.Policy { return p }),
		Resolver: registry.New(registry.WithObserver(metrics)),
		Timeout:  engine.DefaultTimeout,
	}
	// As `buildguard serve` wires it, with its defaults.
	rec, err := records.New(st, filepath.Join(dir, "decisions.journal"), recorderOptions(journalFirst)...)
	if err != nil {
		b.Fatal(err)
	}
	h := &webhook.Handler{Evaluator: e, Metrics: metrics}
	wire(h, rec)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/validate", h)
	ctx, cancel := context.WithCancel(context.Background())
	srv := &server.Server{Listener: ln, CertFile: files.Cert, KeyFile: files.Key, Handler: mux, Log: slog.New(slog.DiscardHandler)}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
		rec.Close()
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(files.CAPEM)
	var protos http.Protocols
	protos.SetHTTP1(true) // as the kube-apiserver calls admission webhooks
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, Protocols: &protos, MaxIdleConnsPerHost: callers}
	b.Cleanup(tr.CloseIdleConnections)
	f := &fixture{url: "https://" + ln.Addr().String() + "/validate?timeout=10s", client: &http.Client{Transport: tr, Timeout: 10 * time.Second},
		rec: rec, store: st, fresh: reg.Host + "/acme/fresh:1", old: reg.Host + "/acme/old:1"}
	// Wait for the server, and warm the registry cache with both images.
	deadline := time.Now().Add(10 * time.Second)
	for _, img := range []string{f.fresh, f.old} {
		for {
			_, err := f.review(img)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("warm-up review of %s: %v", img, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return f
}

// review sends the review of a Pod running image and returns whether it
// was denied (with verdict deny), or an error for anything but a denial
// or an admission with verdict allow.
func (f *fixture) review(image string) (denied bool, err error) {
	uid := fmt.Sprintf("5d1a0c2e-7b3f-4e8a-9c61-%012x", f.uids.Add(1))
	body := fmt.Sprintf(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":%q,
"kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},
"namespace":"shop","name":"web","operation":"CREATE","userInfo":{"username":"system:serviceaccount:kube-system:replicaset-controller"},
"object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"shop"},
"spec":{"containers":[{"name":"app","image":%q}]}}}}`, uid, image)
	resp, err := f.client.Post(f.url, "application/json", strings.NewReader(body))
	if err != nil {
		return false, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return false, err
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("status %d: %.300s", resp.StatusCode, b)
	}
	var out struct {
		Response struct {
			UID              string            `json:"uid"`
			Allowed          bool              `json:"allowed"`
			AuditAnnotations map[string]string `json:"auditAnnotations"`
			Status           struct {
				Code int `json:"code"`
			} `json:"status"`
		} `json:"response"`
	}
	if err := json.Unmarshal(b, &out); err != nil || out.Response.UID != uid {
		return false, fmt.Errorf("answer %.300s: %v", b, err)
	}
	switch v := out.Response.AuditAnnotations["verdict"]; {
	case v == "deny" && !out.Response.Allowed && out.Response.Status.Code == http.StatusForbidden:
		return true, nil
	case v == "allow" && out.Response.Allowed:
		return false, nil
	}
	return false, fmt.Errorf("neither a denial nor an allow: %.300s", bytes.TrimSpace(b))
}

// run sends b.N reviews of image from callers goroutines.
func (f *fixture) run(b *testing.B, image string, wantDenied bool) {
	var (
		mu   sync.Mutex
		lats []time.Duration
		errs error
	)
	stats := f.rec.Stats()
	spilled0 := stats.Spilled.Load()
	b.SetParallelism((callers + 1) / 2)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			start := time.Now()
			denied, err := f.review(image)
			mine = append(mine, time.Since(start))
			if err == nil && denied != wantDenied {
				err = fmt.Errorf("denied %v, want %v", denied, wantDenied)
			}
			if err != nil {
				mu.Lock()
				errs = errors.Join(errs, err)
				mu.Unlock()
				return
			}
		}
		mu.Lock()
		lats = append(lats, mine...)
		mu.Unlock()
	})
	b.StopTimer()
	elapsed := b.Elapsed()
	backlog := queued(f.rec)
	if errs != nil {
		b.Fatal(errs)
	}
	slices.Sort(lats)
	b.ReportMetric(float64(lats[len(lats)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lats[(len(lats)*99+99)/100-1].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(len(lats))/elapsed.Seconds(), "reviews/s")
	// Records the admission path had to journal itself (one fsync each)
	// because the writer's queue was full.
	b.ReportMetric(float64(stats.Spilled.Load()-spilled0), "spilled")
	if wantDenied || backlog < 0 {
		return
	}
	// The allows were queued: what was left when the load stopped, and
	// how long the writer took to catch up.
	drainStart := time.Now()
	for queued(f.rec) > 0 && time.Since(drainStart) < time.Minute {
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(backlog), "backlog")
	b.ReportMetric(float64(time.Since(drainStart).Milliseconds()), "drain-ms")
}
