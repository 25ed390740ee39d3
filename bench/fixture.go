package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	admissionv1 "k8s.io/api/admission/v1"

	"buildguard.dev/buildguard/bench/internal/reviewload"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/internal/benchreview"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
	"buildguard.dev/buildguard/server"
	"buildguard.dev/buildguard/webhook"
)

// fixture is everything both targets share: the registry, the servers,
// one HTTP client and the review body.
type fixture struct {
	cfg        config
	profiling  bool
	dir        string
	client     *http.Client
	transport  *http.Transport
	protoMajor int

	registrySrv *httptest.Server
	regCount    *requestCounter
	metrics     *webhook.Metrics

	imageRef    string
	imageDigest string
	warmNote    string

	reviewBody *benchreview.Body
	uids       benchreview.UIDs

	buildguard, nothing *target

	cancel  context.CancelFunc
	servers sync.WaitGroup
	runErrs chan error
}

func newFixture(ctx context.Context, cfg config) (_ *fixture, err error) {
	f := &fixture{cfg: cfg, profiling: cfg.cpuprofile != "", runErrs: make(chan error, 2)}
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	if f.dir, err = os.MkdirTemp("", "buildguard-bench-"); err != nil {
		return nil, err
	}
	certFile, keyFile, pool, err := reviewload.WriteCertificate(f.dir)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	var protos http.Protocols
	f.protoMajor = 1
	if cfg.http2 {
		protos.SetHTTP2(true)
		f.protoMajor = 2
	} else {
		protos.SetHTTP1(true)
	}
	f.transport = &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		Protocols:           &protos,
		ForceAttemptHTTP2:   cfg.http2,
		MaxIdleConns:        4 * cfg.concurrency,
		MaxIdleConnsPerHost: cfg.concurrency,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 5 * time.Second,
		DisableCompression:  true,
	}
	f.client = &http.Client{Transport: f.transport, Timeout: 10 * time.Second}

	// The registry, on loopback, with the image the Deployment runs.
	f.regCount = &requestCounter{inner: ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))), n: map[string]int64{}}
	f.registrySrv = httptest.NewServer(f.regCount)
	host := strings.TrimPrefix(f.registrySrv.URL, "http://")
	f.imageRef = host + "/bench/app:v1"
	img, err := reviewload.PushImage(ctx, f.imageRef)
	if err != nil {
		return nil, fmt.Errorf("pushing the image: %w", err)
	}
	f.imageDigest = img.Digest

	// buildguard as `buildguard serve` wires it, without Kubernetes.
	pf := filepath.Join(f.dir, "policy.yaml")
	if err := os.WriteFile(pf, []byte(reviewload.PolicyYAML), 0o600); err != nil {
		return nil, err
	}
	p, err := policy.ReadFile(pf)
	if err != nil {
		return nil, err
	}
	f.metrics = webhook.NewMetrics()
	e := &engine.Engine{
		Policies: engine.PolicyFunc(func() *policy.Policy { return p }),
		Resolver: registry.New(registry.WithObserver(f.metrics)),
		Timeout:  engine.DefaultTimeout,
	}
	h := &webhook.Handler{Evaluator: e, Metrics: f.metrics}

	if f.reviewBody, err = newBody(f.imageRef); err != nil {
		return nil, err
	}

	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f.cancel = cancel
	if f.buildguard, err = f.start(sctx, nameBuildguard, h, certFile, keyFile); err != nil {
		return nil, err
	}
	if f.nothing, err = f.start(sctx, nameNothing, reviewload.DoNothing{}, certFile, keyFile); err != nil {
		return nil, err
	}
	if err := f.warm(ctx); err != nil {
		return nil, err
	}
	return f, nil
}

// start serves h at /validate with server.Server on a loopback port and
// waits until /healthz answers.
func (f *fixture) start(ctx context.Context, name string, h http.Handler, certFile, keyFile string) (*target, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	if f.profiling {
		h = labelled(name, h)
	}
	mux := http.NewServeMux()
	mux.Handle("/validate", h)
	s := &server.Server{Listener: ln, CertFile: certFile, KeyFile: keyFile, Handler: mux, Log: slog.New(slog.DiscardHandler)}
	f.servers.Go(func() {
		if err := s.Run(ctx); err != nil {
			f.runErrs <- fmt.Errorf("%s server: %w", name, err)
		}
	})
	base := "https://" + ln.Addr().String()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-f.runErrs:
			return nil, err
		default:
		}
		resp, err := f.client.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return &target{name: name, url: base + "/validate"}, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s server not healthy after 10s: %v", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// labelled marks the handler's CPU samples with target=name.
func labelled(name string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pprof.Do(r.Context(), pprof.Labels("target", name), func(ctx context.Context) {
			h.ServeHTTP(w, r.WithContext(ctx))
		})
	})
}

// warm sends one review to each target: buildguard looks the image up
// and caches it. The buildguard answer must allow with verdict "allow" and
// no warnings, so that the runs measure the path they claim to.
func (f *fixture) warm(ctx context.Context) error {
	before := f.snapshot()
	uid := f.nextUID()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.buildguard.url, bytes.NewReader(f.body(uid)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.client.Do(req)
	if err != nil {
		return fmt.Errorf("warm-up review: %w", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("warm-up review: %w", err)
	}
	var rv admissionv1.AdmissionReview
	if err := json.Unmarshal(b, &rv); err != nil || resp.StatusCode != http.StatusOK || rv.Response == nil {
		return fmt.Errorf("warm-up review: status %d: %.300s", resp.StatusCode, b)
	}
	r := rv.Response
	if !r.Allowed || r.AuditAnnotations[webhook.AnnotationVerdict] != string(policy.OutcomeAllow) || len(r.Warnings) > 0 || string(r.UID) != uid {
		return fmt.Errorf("warm-up review: want uid %s allowed with verdict allow and no warnings, got %.600s", uid, b)
	}
	f.warmNote = fmt.Sprintf("allowed, verdict %q, digests %s; the cold lookup made %s",
		r.AuditAnnotations[webhook.AnnotationVerdict], r.AuditAnnotations[webhook.AnnotationDigests], f.snapshot().sub(before).registryString())
	for _, t := range []*target{f.buildguard, f.nothing} {
		if err := f.review(ctx, t, f.nextUID()); err != nil {
			return fmt.Errorf("warm-up review of %s: %w", t.name, err)
		}
	}
	return nil
}

func (f *fixture) close() {
	if f.transport != nil {
		f.transport.CloseIdleConnections()
	}
	if f.cancel != nil {
		f.cancel()
	}
	f.servers.Wait()
	if f.registrySrv != nil {
		f.registrySrv.Close()
	}
	if f.dir != "" {
		os.RemoveAll(f.dir)
	}
}

// nextUID returns a fresh 36-character request uid.
func (f *fixture) nextUID() string { return f.uids.Next() }

// body returns the review body with request uid.
func (f *fixture) body(uid string) []byte { return f.reviewBody.With(uid) }

func (f *fixture) bodySize() int { return f.reviewBody.Size() }

// newBody makes the AdmissionReview template: a CREATE of an apps/v1
// Deployment whose two containers, app and metrics, run image by tag.
func newBody(image string) (*benchreview.Body, error) {
	return benchreview.NewBody(nil, benchreview.WebContainers(image))
}

// requestCounter counts registry requests by method and kind of path.
type requestCounter struct {
	inner http.Handler
	mu    sync.Mutex
	n     map[string]int64
}

func (c *requestCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	kind := "other"
	switch p := r.URL.Path; {
	case p == "/v2/" || p == "/v2":
		kind = "/v2/"
	case strings.Contains(p, "/manifests/"):
		kind = "manifest"
	case strings.Contains(p, "/blobs/uploads"):
		kind = "upload"
	case strings.Contains(p, "/blobs/"):
		kind = "blob"
	}
	c.mu.Lock()
	c.n[r.Method+" "+kind]++
	c.mu.Unlock()
	c.inner.ServeHTTP(w, r)
}

// sideEffects are what a run cost besides answering: registry requests
// and buildguard's cache lookups.
type sideEffects struct {
	registry map[string]int64   // "GET manifest" → count
	cache    map[string]float64 // "tag hit" → count
}

func (f *fixture) snapshot() sideEffects {
	s := sideEffects{registry: map[string]int64{}, cache: map[string]float64{}}
	f.regCount.mu.Lock()
	for k, v := range f.regCount.n {
		s.registry[k] = v
	}
	f.regCount.mu.Unlock()
	if f.metrics == nil {
		return s
	}
	mfs, err := f.metrics.Registry().Gather()
	if err != nil {
		return s
	}
	for _, mf := range mfs {
		if mf.GetName() != "buildguard_cache_lookups_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var cache, result string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "cache":
					cache = l.GetValue()
				case "result":
					result = l.GetValue()
				}
			}
			s.cache[cache+" "+result] = m.GetCounter().GetValue()
		}
	}
	return s
}

func (s sideEffects) sub(before sideEffects) sideEffects {
	d := sideEffects{registry: map[string]int64{}, cache: map[string]float64{}}
	for k, v := range s.registry {
		if n := v - before.registry[k]; n != 0 {
			d.registry[k] = n
		}
	}
	for k, v := range s.cache {
		if n := v - before.cache[k]; n != 0 {
			d.cache[k] = n
		}
	}
	return d
}

func (s sideEffects) registryString() string {
	var total int64
	keys := make([]string, 0, len(s.registry))
	for k, v := range s.registry {
		total += v
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, s.registry[k])
	}
	out := fmt.Sprintf("%d registry requests", total)
	if len(parts) > 0 {
		out += " (" + strings.Join(parts, ", ") + ")"
	}
	return out
}

func (s sideEffects) String() string {
	c := func(k string) int64 { return int64(s.cache[k]) }
	return fmt.Sprintf("%s; cache lookups: tag %d hit / %d miss, digest %d hit / %d miss",
		s.registryString(), c("tag hit"), c("tag miss"), c("digest hit"), c("digest miss"))
}
