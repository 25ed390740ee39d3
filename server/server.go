// Package server runs buildguard's HTTPS listener: TLS 1.2+ with a
// serving certificate kept current (the certificate and key files
// reloaded when they change, as cert-manager rotates them, or a
// self-managed CA's), health and readiness endpoints, bounded timeouts and a
// graceful shutdown that first drains: it keeps serving, not ready, until
// the endpoints pointing at it are gone.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	certtls "github.com/cert-manager/cert-manager/pkg/server/tls"
	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
)

// Defaults of Server's fields.
const (
	DefaultCertReloadInterval = 10 * time.Second
	DefaultShutdownTimeout    = 10 * time.Second
)

// Server serves handlers over HTTPS.
type Server struct {
	// Listener to serve on. Required.
	Listener net.Listener
	// CertFile and KeyFile are PEM files, re-read every ReloadInterval.
	// They are used when Certificates is nil.
	CertFile, KeyFile string
	// Certificates, when set, provides the serving certificate instead of
	// CertFile and KeyFile: cert-manager's FileCertificateSource, whose
	// files are checked as CheckFiles does before anything is served, or
	// its DynamicSource for a self-managed CA. Run starts it; another
	// listener serving the same certificate shares it by calling its
	// GetCertificate.
	Certificates certtls.CertificateSource
	// ReloadInterval is how often the files are checked. The default is
	// DefaultCertReloadInterval.
	ReloadInterval time.Duration
	// Handler serves everything but /healthz and /readyz.
	Handler http.Handler
	// Ready reports readiness for /readyz beyond having a certificate.
	// The default is always ready.
	Ready func() error
	// DrainDelay is how long, once ctx ends, the server keeps serving
	// with /readyz failing before it stops listening: the time the
	// cluster takes to take the pod out of its Service's endpoints, during
	// which the API server still sends it admissions. The default, 0,
	// stops at once.
	DrainDelay time.Duration
	// Clock times DrainDelay. The default, nil, is the real clock.
	Clock clock.Clock
	// Log is the logger. The default discards.
	Log *slog.Logger
	// Metrics, when set, receives
	// buildguard_tls_certificate_expiry_timestamp_seconds: when the
	// certificate being served expires, read at each scrape, so that a
	// rotation that stopped shows before the API server refuses it.
	Metrics prometheus.Registerer

	draining atomic.Bool
}

// CheckFiles reports a clear error when the certificate or key file is
// missing or does not hold a matching pair, before anything is served.
func CheckFiles(certFile, keyFile string) error {
	for _, f := range []struct{ flag, path string }{{"--tls-cert-file", certFile}, {"--tls-private-key-file", keyFile}} {
		if f.path == "" {
			return fmt.Errorf("%s is required", f.flag)
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%s: %w", f.flag, err)
		}
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		return fmt.Errorf("TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	return nil
}

// Run serves until ctx ends, then shuts down gracefully.
func (s *Server) Run(ctx context.Context) error {
	log := logger.OrDiscard(s.Log)
	src := s.Certificates
	if src == nil {
		interval := s.ReloadInterval
		if interval <= 0 {
			interval = DefaultCertReloadInterval
		}
		src = &certtls.FileCertificateSource{CertPath: s.CertFile, KeyPath: s.KeyFile, UpdateInterval: interval}
	}
	// A file source whose files are missing would only log, and retry.
	if f, ok := src.(*certtls.FileCertificateSource); ok {
		if err := CheckFiles(f.CertPath, f.KeyPath); err != nil {
			return err
		}
	}
	if s.Metrics != nil {
		expiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "buildguard_tls_certificate_expiry_timestamp_seconds",
			Help: "When the serving certificate expires, in seconds since the Unix epoch (0 while there is none).",
		}, func() float64 { return float64(notAfter(src).Unix()) })
		if err := s.Metrics.Register(expiry); err != nil {
			return fmt.Errorf("certificate metric: %w", err)
		}
		defer s.Metrics.Unregister(expiry)
	}
	// The source runs until Run returns, through the drain: a certificate
	// rotated then is served, and the source's end is its failure, never
	// ctx's (which the select below would take for one, or for the end
	// of ctx, at random, and skip the drain).
	srcCtx, srcCancel := context.WithCancel(context.WithoutCancel(ctx))
	srcErr := make(chan error, 1)
	srcDone := make(chan struct{})
	go func() {
		defer close(srcDone)
		srcErr <- src.Start(logr.NewContext(srcCtx, logr.FromSlogHandler(log.Handler())))
	}()
	defer func() {
		srcCancel()
		<-srcDone
	}()
	// Wait for the first certificate: a file source reads at once, a
	// self-managed CA may first have to create its Secret.
	deadline := time.Now().Add(60 * time.Second)
	for !hasCertificate(src) {
		select {
		case err := <-srcErr:
			return fmt.Errorf("TLS certificate source: %v", err)
		case <-ctx.Done():
			return nil
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("no TLS certificate within 60s")
		}
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if s.draining.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		if !hasCertificate(src) {
			http.Error(w, "no TLS certificate", http.StatusServiceUnavailable)
			return
		}
		if s.Ready != nil {
			if err := s.Ready(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		w.Write([]byte("ok\n"))
	})
	mux.Handle("/", s.Handler)

	hs := &http.Server{
		Handler: s.closeWhenDraining(mux),
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: src.GetCertificate,
		},
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.ServeTLS(s.Listener, "", "") }()
	log.Info("serving", "address", s.Listener.Addr().String())

	var err error
	select {
	case <-ctx.Done():
		err = s.drain(serveErr, log)
	case err = <-serveErr:
	case err = <-srcErr:
		switch {
		case err != nil:
			err = fmt.Errorf("TLS certificate source: %w", err)
		case ctx.Err() != nil:
			// The source stops with ctx: when the select comes after
			// both, it may pick the source, and the drain is still due.
			err = s.drain(serveErr, log)
		}
	}
	log.Info("shutting down", "timeout", DefaultShutdownTimeout.String())
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultShutdownTimeout)
	defer scancel()
	if serr := hs.Shutdown(sctx); serr != nil && err == nil {
		err = serr
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// closeWhenDraining answers with Connection: close while the server
// drains. The API server calls webhooks over HTTP/1.1 and keeps idle
// connections to reuse: each leads to the pod it was opened to, whatever
// the endpoints say now. Answered with Connection: close, the client
// drops the connection and its next request opens a new one, which the
// Service sends to a pod still in its endpoints. A kept connection is not
// closed under the client (as http.Server.SetKeepAlivesEnabled(false)
// closes idle ones): a request it is sending at that moment would fail,
// and a POST is not retried. So a pod that is force-deleted, and killed
// 2s after SIGTERM within its drain, has few connections left to cut.
func (s *Server) closeWhenDraining(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() && r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

// drain serves, not ready, for DrainDelay.
func (s *Server) drain(serveErr <-chan error, log *slog.Logger) error {
	if s.DrainDelay <= 0 {
		return nil
	}
	s.draining.Store(true)
	log.Info("draining: not ready, still serving until the endpoints are updated", "delay", s.DrainDelay.String())
	t := clock.OrReal(s.Clock).NewTimer(s.DrainDelay)
	defer t.Stop()
	select {
	case <-t.C():
		return nil
	case err := <-serveErr:
		return err
	}
}

// notAfter is when the certificate src serves expires; the zero
// Unix time when there is none.
func notAfter(src certtls.CertificateSource) time.Time {
	c, err := src.GetCertificate(nil)
	if err != nil || c == nil || len(c.Certificate) == 0 {
		return time.Unix(0, 0)
	}
	leaf := c.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return time.Unix(0, 0)
		}
	}
	return leaf.NotAfter
}

// hasCertificate reports whether src has a certificate to serve. It asks
// GetCertificate, which holds the source's lock, rather than Healthy,
// which in cert-manager v1.21's FileCertificateSource reads the cached
// certificate without it (a data race under -race).
func hasCertificate(src certtls.CertificateSource) bool {
	c, err := src.GetCertificate(nil)
	return err == nil && c != nil
}
